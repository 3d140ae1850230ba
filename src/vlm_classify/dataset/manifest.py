"""The manifest: one row per sampled image, the contract between `prepare` and every later step."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ..errors import DataError, UserError
from ..files import atomic_open

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")

MANIFEST_NAME = "manifest.csv"
LABELS_NAME = "labels.txt"


class ManifestRow(BaseModel):
    """One sampled, validated, normalised image."""

    id: str
    """Stable id, `<class_key>/<file stem>`; also the Batch API `custom_id`."""
    split: Split
    label: str
    """Human-readable class name, e.g. `Black-And-Tan Coonhound`."""
    synset: str
    """WordNet id for Stanford Dogs (`n02085620`), empty for other trees."""
    source_path: str
    """Path of the original file, relative to the source root, with forward slashes."""
    source_sha256: str
    image_path: str
    """Path of the prepared JPEG, relative to the prepared directory."""
    image_sha256: str
    width: int
    height: int
    bytes: int

    @classmethod
    def for_image(
        cls, root: Path, rel: str, *, id: str, split: Split, label: str, synset: str = ""
    ) -> ManifestRow:
        """The row of an image already written at `root/rel` and used as it is (its own source):
        for manifests written directly, as tests and benchmarks do, without `prepare`."""
        from PIL import Image

        data = (Path(root) / rel).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(Path(root) / rel) as img:
            width, height = img.size
        return cls(
            id=id,
            split=split,
            label=label,
            synset=synset,
            source_path=rel,
            source_sha256=digest,
            image_path=rel,
            image_sha256=digest,
            width=width,
            height=height,
            bytes=len(data),
        )


FIELDS: list[str] = list(ManifestRow.model_fields)


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    """Write rows as CSV with a fixed column order and `\\n` line ends (byte-identical reruns)."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.model_dump())


def read_manifest(prepared_dir: Path) -> list[ManifestRow]:
    """Read `DIR/manifest.csv`; a missing or malformed file is one clear error."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST_NAME
    if not prepared_dir.is_dir():
        raise UserError(
            f"{prepared_dir} is not a directory: pass the --out folder of `vlm-classify prepare`"
        )
    if not path.is_file():
        raise UserError(
            f"no {MANIFEST_NAME} in {prepared_dir}: run `vlm-classify prepare SOURCE --out {prepared_dir}` first"
        )
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(FIELDS) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path} lacks columns {sorted(missing)}: rerun `vlm-classify prepare`")
        try:
            return [ManifestRow.model_validate(r) for r in reader]
        except ValueError as e:
            raise DataError(
                f"{path} line {reader.line_num}: {str(e).splitlines()[0]}; rerun `vlm-classify prepare`"
            ) from None


def read_labels(prepared_dir: Path) -> list[str]:
    """The sorted label list written by `prepare`."""
    path = Path(prepared_dir) / LABELS_NAME
    if not path.is_file():
        raise UserError(f"no {LABELS_NAME} in {prepared_dir}: run `vlm-classify prepare` first")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def sample_identity(rows: Iterable[ManifestRow], labels: Iterable[str]) -> str:
    """A hash of what defines a sample: every item's id, split, label and image, and the label
    list. Arms and fine-tunes record it, so answers from an earlier preparation of the same folder
    (another seed, sampling or split) are never resumed or scored as if they were this one's."""
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r.id):
        h.update(json.dumps([r.id, r.split, r.label, r.image_sha256]).encode() + b"\n")
    h.update(json.dumps(list(labels)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Sample:
    """A prepared sample as read from disk: its rows, its label list and its identity."""

    dir: Path
    rows: list[ManifestRow]
    labels: list[str]
    identity: str
    """`sample_identity` of the rows and labels."""

    @property
    def short_id(self) -> str:
        return self.identity[:12]

    def split(self, split: str) -> list[ManifestRow]:
        """The split's rows; an empty split is one clear error."""
        rows = [r for r in self.rows if r.split == split]
        if not rows:
            raise UserError(
                f"the {split} split of {self.dir} is empty: check --split (or the --split of prepare)"
            )
        return rows


def load_sample(prepared_dir: Path) -> Sample:
    """The manifest, the label list and the sample's identity."""
    rows = read_manifest(prepared_dir)
    labels = read_labels(prepared_dir)
    return Sample(Path(prepared_dir), rows, labels, sample_identity(rows, labels))


def load_split(prepared_dir: Path, split: str) -> tuple[list[ManifestRow], list[str]]:
    """The split's rows and the label list; an empty split is one clear error."""
    sample = load_sample(prepared_dir)
    return sample.split(split), sample.labels
