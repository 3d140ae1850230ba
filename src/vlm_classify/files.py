"""Files written whole or not at all: each goes to a hidden temporary file in the same folder, is
flushed to disk (`os.fsync`), then renamed over its target (`os.replace`, atomic on POSIX and
Windows). A crash or a kill leaves the previous file, or none, never a half-written one that a
rerun or the report would trust. The temporary file is removed when the write fails; one left by
a kill is hidden (`.NAME.<hex>.tmp`) and matches no pattern the readers look for.

A folder of files (a model, the report) is made safe by its order: every file in it is written
this way, and the file that marks it finished (a card, a record) is written last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def fsync_file(path: Path | str) -> None:
    """Flush a file already written and closed to disk."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path | str) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where a folder cannot be
    opened (Windows, whose renames need no such step)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path | str) -> None:
    """Flush every file under `folder`, and the folder itself, to disk (before it is renamed)."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            fsync_file(path)
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_open(
    path: Path | str,
    mode: str = "w",
    *,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open `path` for writing (`"w"` text, UTF-8 unless told, or `"wb"`) through a temporary
    file: it replaces `path` when the block ends normally, and is removed when it raises."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r} (use 'w' or 'wb')")
    path = Path(path)
    tmp = _temp_for(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    f = open(tmp, mode.replace("w", "x"), encoding=encoding, errors=errors, newline=newline)  # noqa: SIM115
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path to write `path` through, for writers that take a file name
    (`safetensors.torch.save_file`, `torch.save`): when the block ends normally the file is
    flushed and renamed over `path`; when it raises, it is removed."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """`Path.write_bytes`, whole or not at all."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(
    path: Path | str, text: str, *, encoding: str = "utf-8", errors: str | None = None
) -> None:
    """`Path.write_text`, whole or not at all."""
    with atomic_open(path, "w", encoding=encoding, errors=errors) as f:
        f.write(text)


@contextlib.contextmanager
def staged_into(folder: Path | str) -> Iterator[Path]:
    """An empty hidden folder beside `folder`, for writers that fill a folder (`save_pretrained`):
    when the block ends normally, each file written there is flushed and renamed into `folder`
    (each one whole, replacing its namesake); the staging folder is removed either way. One
    writer per `folder` at a time: a staging folder left by a kill is cleared by the next."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        fsync_tree(staging)
        folder.mkdir(parents=True, exist_ok=True)
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            dest = folder / src.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "atomic_open",
    "atomic_path",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "staged_into",
    "write_bytes_atomic",
    "write_text_atomic",
]
