"""A generated class-per-folder image tree: the offline stand-in for Stanford Dogs in demos and tests.

Each class gets its own palette and shape, so the images are learnable, and a few deliberately bad
files (empty, truncated, not an image, an exact duplicate) exercise `prepare`'s validation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError

BREEDS = [
    "n02085620-Chihuahua",
    "n02085782-Japanese_spaniel",
    "n02086240-Shih-Tzu",
    "n02088364-beagle",
    "n02089078-black-and-tan_coonhound",
    "n02090622-borzoi",
    "n02091244-Ibizan_hound",
    "n02093754-Border_terrier",
    "n02099601-golden_retriever",
    "n02106662-German_shepherd",
    "n02110185-Siberian_husky",
    "n02112018-Pomeranian",
    "n02113023-Pembroke",
    "n02115641-dingo",
    "n02116738-African_hunting_dog",
]
"""Real Stanford Dogs folder names, so generated trees look and parse like the real one."""

DEFECTS = (
    "an empty file",
    "a truncated JPEG",
    "a text file named .jpg",
    "an exact copy of another image",
    "a hidden .DS_Store",
)
"""The deliberately bad files `make_sample` adds to the first class, in plain words."""


def _image(class_index: int, item: int, size: tuple[int, int]) -> Image.Image:
    rng = random.Random(class_index * 100_003 + item)
    base = ((class_index * 67) % 256, (class_index * 151) % 256, (class_index * 29 + 90) % 256)
    img = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(12):  # background clutter shared by every class
        x, y = rng.randrange(w), rng.randrange(h)
        c = tuple(rng.randrange(256) for _ in range(3))
        draw.rectangle((x, y, x + rng.randrange(8, w // 4), y + rng.randrange(8, h // 4)), fill=c)
    # the class signal: a shape with a class-specific number of sides and colour
    cx, cy = w // 2 + rng.randrange(-w // 8, w // 8), h // 2 + rng.randrange(-h // 8, h // 8)
    r = min(w, h) // 3
    sides = 3 + class_index % 6
    fg = (255 - base[0], 255 - base[1], 255 - base[2])
    draw.regular_polygon((cx, cy, r), n_sides=sides, rotation=rng.randrange(360), fill=fg)
    return img.filter(ImageFilter.GaussianBlur(0.8))


def iter_sample_files(classes: int, per_class: int) -> Iterator[tuple[str, int, int]]:
    """(folder, class index, item index) for every generated image, in a fixed order."""
    for ci, folder in enumerate(BREEDS[:classes]):
        for item in range(per_class):
            yield folder, ci, item


def make_sample(
    out: Path,
    classes: int = 10,
    per_class: int = 50,
    size: tuple[int, int] = (320, 240),
    defects: bool = True,
) -> Path:
    """Write a Stanford-Dogs-shaped tree `out/Images/<synset-breed>/<synset>_<n>.jpg`; return `out`.

    With `defects`, the first class also gets the files `DEFECTS` describes, on top of its
    `per_class` good images.
    """
    if not 2 <= classes <= len(BREEDS):
        raise UserError(f"--classes must be between 2 and {len(BREEDS)} (a classifier needs two)")
    if per_class < 1:
        raise UserError("--per-class must be at least 1")
    images = Path(out) / "Images"
    for folder, ci, item in iter_sample_files(classes, per_class):
        synset = folder.split("-", 1)[0]
        path = images / folder / f"{synset}_{item:04d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(ci, item, size).save(path, "JPEG", quality=88)
    if defects:
        first = images / BREEDS[0]
        synset = BREEDS[0].split("-", 1)[0]
        # `bad_*` sort before the good files, so even `--sampling first` decodes and reports them
        (first / "bad_empty.jpg").write_bytes(b"")
        good = (first / f"{synset}_0000.jpg").read_bytes()
        (first / "bad_truncated.jpg").write_bytes(good[: len(good) // 3])
        (first / "bad_not_an_image.jpg").write_text("not an image\n", encoding="utf-8")
        (first / f"{synset}_zcopy.jpg").write_bytes(good)  # after its original, so the copy goes
        (first / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return Path(out)
