"""Image and tree generators for the `prepare` tests (every file is made here with Pillow), and
helpers that look at a prepared folder."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from PIL import Image

from vlm_classify.dataset.manifest import read_manifest
from vlm_classify.dataset.outdir import OWNER_MARK

_ORIENTATION = 0x0112


def rgb_image(
    size: tuple[int, int] = (32, 24), seed: int = 0, blocks: int = 4, max_block: int = 20
) -> Image.Image:
    """A small RGB image with a few random blocks, distinct per seed."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(blocks):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = (
            x0,
            y0,
            min(size[0], x0 + rng.randrange(2, max_block)),
            min(size[1], y0 + rng.randrange(2, max_block)),
        )
        img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), box)
    return img


def save(img: Image.Image, path: Path, fmt: str | None = None, **kwargs: object) -> Path:
    """Save `img` to `path`, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kwargs)
    return path


def jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
    """A small RGB JPEG."""
    return save(rgb_image(size, seed), path, "JPEG", quality=90)


def make_tree(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (32, 24), seed0: int = 0
) -> Path:
    """A class-per-folder tree: `classes` maps folder name to image count; all images distinct."""
    seed = seed0
    for folder, count in classes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed += 1
            jpeg(root / folder / f"img_{i:03d}.jpg", seed=seed * 7919, size=size)
    return root


def exif_rotated(path: Path) -> Path:
    """A 40x20 JPEG, red left half and blue right half, tagged orientation 6 (display rotated 90° CW)."""
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    return save(img, path, "JPEG", quality=95, exif=exif.tobytes())


def rgba_png(path: Path) -> Path:
    """An RGBA PNG: opaque green left half, fully transparent (black) right half."""
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((0, 200, 0, 255), (0, 0, 10, 10))
    return save(img, path, "PNG")


def truncated_jpeg(path: Path, seed: int = 99) -> Path:
    """A JPEG cut in half."""
    full = jpeg(path, seed=seed, size=(64, 48))
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    return full


# --- looking at a prepared folder ----------------------------------------------------------


def image_files(out: Path) -> set[str]:
    """Every file under out/images/ (hidden ones too) but the owner mark."""
    return {
        p.relative_to(out).as_posix()
        for p in (out / "images").rglob("*")
        if p.is_file() and p.name != OWNER_MARK
    }


def listed(out: Path) -> set[str]:
    """The image paths the manifest lists."""
    return {r.image_path for r in read_manifest(out)}


def with_other_class(src: Path, count: int = 4, folder: str = "zz_other") -> Path:
    """Add a second class of distinct images (a classifier needs two) and return `src`."""
    return make_tree(src, {folder: count}, seed0=10_000)


def rows_of(out: Path, folder: str) -> list[Any]:
    """Manifest rows of one class folder."""
    return [r for r in read_manifest(out) if r.source_path.startswith(f"{folder}/")]


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of the kept outputs and of every image the manifest lists (checked against it)."""
    sums = {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("manifest.csv", "labels.txt", "prepare-report.json")
    }
    for row in read_manifest(out):
        sums[row.image_path] = hashlib.sha256((out / row.image_path).read_bytes()).hexdigest()
        assert sums[row.image_path] == row.image_sha256, row.image_path
    return sums
