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
    # the other 105 breeds, in synset order: `classes = 120` is a tree the size of the real one
    "n02085936-Maltese_dog",
    "n02086079-Pekinese",
    "n02086646-Blenheim_spaniel",
    "n02086910-papillon",
    "n02087046-toy_terrier",
    "n02087394-Rhodesian_ridgeback",
    "n02088094-Afghan_hound",
    "n02088238-basset",
    "n02088466-bloodhound",
    "n02088632-bluetick",
    "n02089867-Walker_hound",
    "n02089973-English_foxhound",
    "n02090379-redbone",
    "n02090721-Irish_wolfhound",
    "n02091032-Italian_greyhound",
    "n02091134-whippet",
    "n02091467-Norwegian_elkhound",
    "n02091635-otterhound",
    "n02091831-Saluki",
    "n02092002-Scottish_deerhound",
    "n02092339-Weimaraner",
    "n02093256-Staffordshire_bullterrier",
    "n02093428-American_Staffordshire_terrier",
    "n02093647-Bedlington_terrier",
    "n02093859-Kerry_blue_terrier",
    "n02093991-Irish_terrier",
    "n02094114-Norfolk_terrier",
    "n02094258-Norwich_terrier",
    "n02094433-Yorkshire_terrier",
    "n02095314-wire-haired_fox_terrier",
    "n02095570-Lakeland_terrier",
    "n02095889-Sealyham_terrier",
    "n02096051-Airedale",
    "n02096177-cairn",
    "n02096294-Australian_terrier",
    "n02096437-Dandie_Dinmont",
    "n02096585-Boston_bull",
    "n02097047-miniature_schnauzer",
    "n02097130-giant_schnauzer",
    "n02097209-standard_schnauzer",
    "n02097298-Scotch_terrier",
    "n02097474-Tibetan_terrier",
    "n02097658-silky_terrier",
    "n02098105-soft-coated_wheaten_terrier",
    "n02098286-West_Highland_white_terrier",
    "n02098413-Lhasa",
    "n02099267-flat-coated_retriever",
    "n02099429-curly-coated_retriever",
    "n02099712-Labrador_retriever",
    "n02099849-Chesapeake_Bay_retriever",
    "n02100236-German_short-haired_pointer",
    "n02100583-vizsla",
    "n02100735-English_setter",
    "n02100877-Irish_setter",
    "n02101006-Gordon_setter",
    "n02101388-Brittany_spaniel",
    "n02101556-clumber",
    "n02102040-English_springer",
    "n02102177-Welsh_springer_spaniel",
    "n02102318-cocker_spaniel",
    "n02102480-Sussex_spaniel",
    "n02102973-Irish_water_spaniel",
    "n02104029-kuvasz",
    "n02104365-schipperke",
    "n02105056-groenendael",
    "n02105162-malinois",
    "n02105251-briard",
    "n02105412-kelpie",
    "n02105505-komondor",
    "n02105641-Old_English_sheepdog",
    "n02105855-Shetland_sheepdog",
    "n02106030-collie",
    "n02106166-Border_collie",
    "n02106382-Bouvier_des_Flandres",
    "n02106550-Rottweiler",
    "n02107142-Doberman",
    "n02107312-miniature_pinscher",
    "n02107574-Greater_Swiss_Mountain_dog",
    "n02107683-Bernese_mountain_dog",
    "n02107908-Appenzeller",
    "n02108000-EntleBucher",
    "n02108089-boxer",
    "n02108422-bull_mastiff",
    "n02108551-Tibetan_mastiff",
    "n02108915-French_bulldog",
    "n02109047-Great_Dane",
    "n02109525-Saint_Bernard",
    "n02109961-Eskimo_dog",
    "n02110063-malamute",
    "n02110627-affenpinscher",
    "n02110806-basenji",
    "n02110958-pug",
    "n02111129-Leonberg",
    "n02111277-Newfoundland",
    "n02111500-Great_Pyrenees",
    "n02111889-Samoyed",
    "n02112137-chow",
    "n02112350-keeshond",
    "n02112706-Brabancon_griffon",
    "n02113186-Cardigan",
    "n02113624-toy_poodle",
    "n02113712-miniature_poodle",
    "n02113799-standard_poodle",
    "n02113978-Mexican_hairless",
    "n02115913-dhole",
]
"""Real Stanford Dogs folder names, so generated trees look and parse like the real one (all 120;
the first 15 are a spread of easy-to-tell breeds, so small samples stay varied)."""

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
