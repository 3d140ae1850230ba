"""The prepared folder (`--out`): refuse overlaps with the source, claim `images/`, commit a run.

A run writes images under content-hashed names (`images.content_path`), so different bytes never
share a path and nothing the previous manifest lists changes before the new manifest is committed.
`commit` stages manifest.csv, labels.txt and prepare-report.json as hidden files, renames them into
place (manifest last), and only then are files under `images/` that the new manifest does not
list removed. A run that fails or is interrupted before that leaves the previous sample whole.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import write_text_atomic
from .manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from .sources import shown

REPORT_NAME = "prepare-report.json"
FAILED_REPORT_NAME = "prepare-report.failed.json"
"""The report of a run that failed (too few classes or images, `--strict`); the kept one stays."""
IMAGES_DIR = "images"
OWNER_MARK = ".vlm-classify-prepare"
"""Marks `images/` as written by `prepare`, which may then delete what its manifest does not list."""


def _key(path: Path) -> str:
    """A resolved path compared the way the most permissive filesystem would: ignoring case."""
    return os.path.normcase(str(path.resolve())).casefold()


def _within(inner: Path, outer: Path) -> bool:
    """`inner` is `outer` or below it, ignoring case (macOS and Windows filesystems do)."""
    i, o = _key(inner), _key(outer)
    return i == o or i.startswith(o.rstrip(os.sep) + os.sep)


def check_out(out: Path, root: Path, layout: str) -> None:
    """Refuse an output folder that overlaps the source (a rerun would read or delete its own input)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {shown(out)} is a file: pass a folder (it will be created)")
    if _within(out, root):
        raise UserError(
            f"--out {shown(out)} is inside the source {shown(root)}: choose a folder outside it"
        )
    if layout == "stanford-dogs" and _key(out) == _key(root.parent):
        raise UserError(
            f"--out {shown(out)} is the folder holding the source's {root.name}/: choose a folder "
            "outside it"
        )
    if _within(root, out / IMAGES_DIR):
        raise UserError(
            f"the source {shown(root)} is inside {shown(out / IMAGES_DIR)}: choose another --out"
        )


def claim(out: Path) -> Path:
    """Create `out/images/` and mark it as this tool's; refuse an `images/` someone else filled."""
    images = out / IMAGES_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        if (
            images.is_dir()
            and not (images / OWNER_MARK).exists()
            and not (out / MANIFEST_NAME).is_file()
            and any(images.iterdir())
        ):
            raise UserError(
                f"{shown(images)} holds files that `vlm-classify prepare` did not write (it removes "
                "what its manifest does not list there): choose a new or empty --out"
            )
        images.mkdir(exist_ok=True)
        if not (images / OWNER_MARK).exists():
            (images / OWNER_MARK).write_text(
                "written by vlm-classify prepare: files here that manifest.csv does not list are "
                "removed by the next run\n",
                encoding="utf-8",
            )
    except OSError as e:
        raise UserError(
            f"cannot write to --out {shown(out)} ({e.strerror or e}): check the path and its "
            "permissions"
        ) from None
    return images


def listed_images(out: Path) -> set[str]:
    """Image paths the current manifest lists (none when there is no readable manifest)."""
    try:
        return {r.image_path for r in read_manifest(out)}
    except Exception:
        return set()


def unlisted_files(out: Path, kept: set[str]) -> list[Path]:
    """Every file (and symlink) under `out/images/` that `kept` does not list, but the owner mark:
    images of earlier samples, orphans of interrupted runs, stale temporary files."""
    images = out / IMAGES_DIR
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(images):
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]  # never followed, only unlinked
        for name in sorted([*filenames, *links]):
            path = here / name
            if here == images and name == OWNER_MARK:
                continue
            if path.relative_to(out).as_posix() not in kept:
                found.append(path)
    return found


def remove_files(out: Path, paths: Iterable[Path | str]) -> int:
    """Delete files that lie inside `out/images/` (anything else is left alone); returns how many.

    Folders emptied by this are removed too, `images/` itself never.
    """
    images = (out / IMAGES_DIR).resolve()
    removed = 0
    parents: set[Path] = set()
    for p in paths:
        path = out / p
        parent = path.parent.resolve()
        if parent != images and images not in parent.parents:
            continue
        try:
            (parent / path.name).unlink()  # a symlink itself, never what it points to
        except OSError:
            continue
        removed += 1
        parents.add(parent)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        while parent != images and images in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty
                break
            parent = parent.parent
    return removed


def _write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (no half-written file)."""
    write_text_atomic(path, text, errors="backslashreplace")


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a prepare report as indented JSON."""
    _write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def commit(out: Path, rows: list[ManifestRow], labels: list[str], report: dict[str, Any]) -> None:
    """Make a run's sample the current one: stage the three files, then rename them into place."""
    staged = {
        out / f".{LABELS_NAME}.new": out / LABELS_NAME,
        out / f".{REPORT_NAME}.new": out / REPORT_NAME,
        out / ".manifest.new.csv": out / MANIFEST_NAME,  # last: it is the contract
    }
    try:
        new_labels, new_report, new_manifest = staged
        _write_text(new_labels, "".join(f"{x}\n" for x in labels))
        write_report(new_report, report)
        write_manifest(new_manifest, rows)
        for new, final in staged.items():
            os.replace(new, final)
    except OSError as e:
        raise UserError(
            f"cannot write the outputs in {shown(out)} ({e.strerror or e}): check space and "
            "permissions"
        ) from None
    finally:
        for new in staged:
            with contextlib.suppress(OSError):
                new.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / FAILED_REPORT_NAME).unlink(missing_ok=True)
