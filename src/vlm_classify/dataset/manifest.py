"""The manifest: one row per sampled image, the contract between `prepare` and every later step."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from ..errors import DataError, UserError

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


FIELDS: list[str] = list(ManifestRow.model_fields)


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    """Write rows as CSV with a fixed column order and `\\n` line ends (byte-identical reruns)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.model_dump())
    tmp.replace(path)


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


def load_split(prepared_dir: Path, split: str) -> tuple[list[ManifestRow], list[str]]:
    """The split's rows and the label list; an empty split is one clear error."""
    rows = [r for r in read_manifest(prepared_dir) if r.split == split]
    if not rows:
        raise UserError(
            f"the {split} split of {prepared_dir} is empty: check --split (or the --split of prepare)"
        )
    return rows, read_labels(prepared_dir)
