"""Download and safely extract the Stanford Dogs images archive into the user cache.

The download resumes (HTTP Range on a `.part` file), its size and checksum are verified, and
extraction refuses any member that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import platformdirs

from ..errors import DataError

log = logging.getLogger(__name__)

STANFORD_DOGS_URL = "http://vision.stanford.edu/aimi/datasets/StanfordDogs/images.tar"
STANFORD_DOGS_SIZE = 793_579_520
"""Bytes of images.tar, as recorded by several public download scripts for this archive."""
STANFORD_DOGS_CHECKSUM = "md5:1bb1f2a596ae7057f99d7d75860002ef"
"""The md5 that torchvision-style Stanford Dogs loaders check (no sha256 is published)."""

ByteProgress = Callable[[int, "int | None"], None]
"""Called with (bytes done, bytes total or None) while downloading."""
CountProgress = Callable[[int, int], None]
"""Called with (members done, members total) while extracting."""

_CHUNK = 1 << 20
_USER_AGENT = "vlm-classify (dataset download)"


def default_cache_dir() -> Path:
    """The per-user cache folder of vlm-classify (platformdirs)."""
    return Path(platformdirs.user_cache_dir("vlm-classify"))


def file_digest(path: Path, checksum: str) -> tuple[str, str, str]:
    """(algorithm, expected hex, actual hex) for a checksum written `md5:<hex>`, `sha256:<hex>` or bare hex."""
    algo, sep, expected = checksum.partition(":")
    if not sep:
        algo, expected = ("md5" if len(checksum) == 32 else "sha256"), checksum
    h = hashlib.new(algo.lower())
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return algo, expected.lower(), h.hexdigest()


def verify_file(path: Path, size: int | None, checksum: str | None) -> None:
    """Raise DataError unless `path` has the expected size and checksum."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DataError(f"{path.name} is {actual:,} bytes, expected {size:,}")
    if checksum:
        algo, expected, got = file_digest(path, checksum)
        if got != expected:
            raise DataError(f"{path.name} failed its {algo} check (expected {expected}, got {got})")


def _total_from(resp: http.client.HTTPResponse, have: int) -> int | None:
    """The full file size from Content-Range (206) or Content-Length (200)."""
    if resp.status == 206:
        m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m and m.group(2) != "*":
            return int(m.group(2))
        length = resp.headers.get("Content-Length")
        return have + int(length) if length else None
    length = resp.headers.get("Content-Length")
    return int(length) if length else None


def _fetch_once(
    url: str, part: Path, size: int | None, progress: ByteProgress | None, timeout: float
) -> bool:
    """One HTTP request that appends to `part` from where it stops; True when the file is complete."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return True
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: the .part is complete, or too long
            m = re.search(r"/(\d+)", e.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == have:
                return True
            part.unlink()
            return False
        raise DataError(
            f"downloading {url} failed: HTTP {e.code} {e.reason}; rerun later"
        ) from None
    with resp:
        if resp.status == 206:
            start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if start and int(start.group(1)) != have:
                raise DataError(
                    f"{url} answered a resume request with the wrong range; delete {part} and rerun"
                )
            mode = "ab"
        else:  # the server ignored Range: start again
            have, mode = 0, "wb"
        total = _total_from(resp, have)
        if size is not None and total is not None and total != size:
            raise DataError(
                f"{url} is {total:,} bytes but {size:,} were expected: the file changed upstream; "
                "download it yourself and pass its folder as SOURCE"
            )
        with part.open(mode) as f:
            while block := resp.read(_CHUNK):
                f.write(block)
                have += len(block)
                if progress:
                    progress(have, total)
    expected = size if size is not None else total
    return expected is None or have == expected


def download_file(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    checksum: str | None = None,
    progress: ByteProgress | None = None,
    timeout: float = 60.0,
    attempts: int = 5,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming after interruptions; verify size and checksum.

    A `.part` that fails verification is deleted, so the next run starts clean.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_file(dest, size, checksum)
            return dest
        except DataError as e:
            log.warning("%s; downloading again", e)
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    error: Exception | None = None
    for _ in range(attempts):
        try:
            if _fetch_once(url, part, size, progress, timeout):
                break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            error = e  # a dropped connection: try again from where the .part stops
    else:
        raise DataError(
            f"downloading {url} did not finish ({error or 'incomplete'}): rerun to resume "
            f"from {part.stat().st_size if part.exists() else 0:,} bytes"
        )
    try:
        verify_file(part, size, checksum)
    except DataError as e:
        part.unlink()
        raise DataError(f"{e}: the download was deleted; rerun to fetch it again") from None
    os.replace(part, dest)
    return dest


def _inside(root: Path, path: Path) -> bool:
    """True when `path` (already resolved) is `root` or below it."""
    return path == root or root in path.parents


def check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Refuse a tar member that is absolute, climbs with `..`, links outside `root` or is a device."""
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or pure.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"refused archive member {name!r}: absolute path")
    if ".." in pure.parts or ".." in Path(name).parts:
        raise DataError(f"refused archive member {name!r}: '..' escapes the target folder")
    if not _inside(root, (root / name).resolve()):
        raise DataError(f"refused archive member {name!r}: it lands outside the target folder")
    if member.issym() or member.islnk():
        link = member.linkname
        if os.path.isabs(link) or link.startswith(("/", "\\")):
            raise DataError(f"refused archive member {name!r}: link to absolute path {link!r}")
        base = root / pure.parent if member.issym() else root
        if not _inside(root, (base / link).resolve()):
            raise DataError(
                f"refused archive member {name!r}: link {link!r} points outside the target folder"
            )
    elif not (member.isfile() or member.isdir()):
        raise DataError(f"refused archive member {name!r}: device or special file")


def safe_extract(archive: Path, target: Path, progress: CountProgress | None = None) -> Path:
    """Extract `archive` into `target` (via a temporary sibling), refusing the whole archive if any member is unsafe."""
    target = target.resolve()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                check_member(member, tmp)
            for i, member in enumerate(members, 1):
                tar.extract(member, tmp, **kwargs)  # type: ignore[arg-type]
                if progress:
                    progress(i, len(members))
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(
            f"{archive} is not a readable tar archive ({e}): delete it and rerun"
        ) from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def download_stanford_dogs(
    cache_dir: Path | None = None,
    *,
    url: str = STANFORD_DOGS_URL,
    size: int | None = STANFORD_DOGS_SIZE,
    checksum: str | None = STANFORD_DOGS_CHECKSUM,
    progress: ByteProgress | None = None,
    extract_progress: CountProgress | None = None,
    keep_archive: bool = False,
) -> Path:
    """Fetch and extract Stanford Dogs' images into the cache once; return the folder to prepare from.

    `url`, `size` and `checksum` are parameters so tests can serve a small archive locally.
    """
    cache = Path(cache_dir or default_cache_dir()) / "stanford-dogs"
    extracted = cache / "extracted"
    marker = cache / "extracted.ok"
    stamp = f"{url}\n{checksum or size}\n"
    if marker.is_file() and marker.read_text(encoding="utf-8") == stamp and extracted.is_dir():
        return extracted
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "images.tar"
    archive = download_file(url, cache / name, size=size, checksum=checksum, progress=progress)
    safe_extract(archive, extracted, progress=extract_progress)
    marker.write_text(stamp, encoding="utf-8")
    if not keep_archive:
        archive.unlink()
    return extracted
