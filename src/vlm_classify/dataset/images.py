"""Validate and normalise one image: fully decode it, make it RGB, upright and small, write a JPEG.

These functions run in worker processes, so they take and return small picklable records,
never pixel data. A prepared file's name ends with a prefix of its sha256 (`content_path`), so
different bytes never share a path: a rerun never overwrites a file an earlier manifest lists.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

JPEG_QUALITY = 90
"""Quality of re-encoded images: visually lossless for classification, a fraction of the bytes."""

NAME_HASH_CHARS = 12
"""Hex digits of the content hash in a prepared file's name (48 bits: no collision in practice)."""

_ORIENTATION = 0x0112
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageTask:
    """One file to validate and normalise, and where its prepared JPEG goes."""

    src: str
    dest_base: str
    """The prepared file's path without its content hash and suffix (see `content_path`)."""
    max_side: int


@dataclass(frozen=True)
class ImageResult:
    """What became of one file: a reason it was skipped, or the prepared JPEG's facts."""

    src: str
    ok: bool
    reason: str = ""
    pixel_sha256: str = ""
    image_sha256: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0
    kept: bool = False
    """The source was already a small upright RGB JPEG and was copied byte for byte."""
    written: bool = False
    """False when an identical file was already there (a rerun writes nothing)."""


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in chunks (large files never sit in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_path(base: str, digest: str) -> str:
    """`<base>-<first 12 hex digits of the sha256>.jpg`: the name of a prepared file."""
    return f"{base}-{digest[:NAME_HASH_CHARS]}.jpg"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white so no pixel turns black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range to 8-bit
        grey = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a corrupt EXIF block counts as upright."""
    try:
        return int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def _fitted(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """The size with its longest side shrunk to `max_side`, aspect ratio kept."""
    w, h = size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _write_once(dest: Path, data: bytes, digest: str) -> bool:
    """Write `data` atomically unless `dest` already holds exactly it; True when written.

    `dest` is named after `digest`, so whatever it held before was meant to be these bytes: a
    missing or damaged file is (re)written, never a different image replaced.
    """
    try:
        if dest.stat().st_size == len(data) and sha256_file(dest) == digest:
            return False
    except OSError:  # missing, or unreadable: writing below says what is wrong, if anything
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def process_image(task: ImageTask) -> ImageResult:
    """Decode `task.src` fully, normalise it and write the prepared JPEG next to `task.dest_base`.

    An RGB JPEG within `max_side` with no EXIF rotation is copied byte for byte; anything else is
    converted to RGB, turned upright, shrunk (LANCZOS) and saved at quality 90 without EXIF.
    """
    try:
        data = Path(task.src).read_bytes()
    except OSError as e:
        return ImageResult(task.src, False, f"unreadable: {e.strerror or e}")
    if not data:
        return ImageResult(task.src, False, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and bomb warnings: the checks below decide
            with Image.open(io.BytesIO(data)) as im:
                fmt, src_mode = im.format, im.mode
                orientation = _orientation(im)
                big = 2 * task.max_side
                drafted = False
                if fmt == "JPEG" and min(im.size) >= 2 * big:
                    # Let libjpeg decode at 1/2..1/8 scale: the whole stream is still read and
                    # checked, at a fraction of the cost, and LANCZOS does the final step.
                    drafted = im.draft(im.mode, (big, big)) is not None
                im.load()
                icc = im.info.get("icc_profile") if src_mode == "RGB" else None
                img = ImageOps.exif_transpose(im) if orientation != 1 else im
                rgb = to_rgb(img)
                pixel_sha = hashlib.sha256(
                    f"{rgb.size[0]}x{rgb.size[1]}:".encode() + rgb.tobytes()
                ).hexdigest()
                keep = (
                    fmt == "JPEG"
                    and src_mode == "RGB"
                    and orientation == 1
                    and not drafted
                    and max(rgb.size) <= task.max_side
                )
                if keep:
                    out, size = data, rgb.size
                else:
                    if max(rgb.size) > task.max_side:
                        rgb = rgb.resize(_fitted(rgb.size, task.max_side), Image.Resampling.LANCZOS)
                    buf = io.BytesIO()
                    extra = {"icc_profile": icc} if icc else {}
                    rgb.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True, **extra)
                    out, size = buf.getvalue(), rgb.size
    except UnidentifiedImageError:
        return ImageResult(task.src, False, "not an image")
    except Image.DecompressionBombError as e:
        return ImageResult(task.src, False, f"too many pixels to decode safely: {e}")
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        return ImageResult(task.src, False, f"corrupt or truncated image: {e}")
    digest = hashlib.sha256(out).hexdigest()
    dest = Path(content_path(task.dest_base, digest))
    written = _write_once(dest, out, digest)  # an OSError here is the output's fault
    return ImageResult(
        task.src,
        True,
        pixel_sha256=pixel_sha,
        image_sha256=digest,
        width=size[0],
        height=size[1],
        bytes=len(out),
        kept=keep,
        written=written,
    )


def process_batch(tasks: list[ImageTask]) -> list[ImageResult]:
    """Process a chunk of tasks in one worker call (fewer round trips than one task each)."""
    return [process_image(t) for t in tasks]
