"""Shared fixtures: every image a test uses is generated here, never downloaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dataset_fixtures import rgb_image
from vlm_classify.dataset.manifest import LABELS_NAME, MANIFEST_NAME, ManifestRow, write_manifest


def make_jpeg(
    path: Path, size: tuple[int, int] = (500, 375), seed: int = 0, quality: int = 90
) -> Path:
    """Write a small, distinct RGB JPEG (random blocks from `seed`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb_image(size, seed, blocks=8, max_block=200).save(path, "JPEG", quality=quality)
    return path


def make_prepared_dir(
    root: Path, labels: list[str], per_split: dict[str, int], size: tuple[int, int] = (64, 48)
) -> Path:
    """A prepared directory (manifest, labels, images) written directly, without `prepare`."""
    rows: list[ManifestRow] = []
    seed = 0
    for li, label in enumerate(labels):
        key = f"n{li:08d}"
        for split, count in per_split.items():
            for i in range(count):
                seed += 1
                rel = f"images/{key}/{split}_{i}.jpg"
                p = make_jpeg(root / rel, size=size, seed=seed)
                data = p.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                rows.append(
                    ManifestRow(
                        id=f"{key}/{split}_{i}",
                        split=split,  # type: ignore[arg-type]
                        label=label,
                        synset=key,
                        source_path=f"{key}-{label}/{split}_{i}.jpg",
                        source_sha256=digest,
                        image_path=rel,
                        image_sha256=digest,
                        width=size[0],
                        height=size[1],
                        bytes=len(data),
                    )
                )
    write_manifest(root / MANIFEST_NAME, rows)
    (root / LABELS_NAME).write_text("".join(f"{lb}\n" for lb in sorted(labels)), encoding="utf-8")
    return root


@pytest.fixture
def small_prepared(tmp_path: Path) -> Path:
    """Three classes, 12/2/2 images each: enough for the fine-tuning minimum of 10 examples."""
    return make_prepared_dir(
        tmp_path / "prepared",
        ["Beagle", "Chihuahua", "Golden Retriever"],
        {"train": 12, "val": 2, "test": 2},
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`network` tests run only with VLM_CLASSIFY_NETWORK=1, `gpu` tests only where torch sees a
    CUDA GPU: a default run is offline and CPU-only."""
    import importlib.util
    import os

    network = os.environ.get("VLM_CLASSIFY_NETWORK") == "1"
    gpu = False
    if any("gpu" in item.keywords for item in items) and importlib.util.find_spec("torch"):
        import torch

        gpu = torch.cuda.is_available()
    for item in items:
        if "network" in item.keywords and not network:
            item.add_marker(pytest.mark.skip(reason="needs the internet: VLM_CLASSIFY_NETWORK=1"))
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
