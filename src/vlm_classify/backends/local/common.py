"""What every local model shares: the device, images as tensors in batches, offline loading,
memory and version records. Imports torch: only loaded when a local arm runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ...dataset.manifest import ManifestRow
from ...errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; asking for one that is not there is
    one clear line."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA GPU here; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            "--device mps: this machine has no Apple MPS device; use --device cpu or auto"
        )
    return torch.device(name)


def offline(requested: bool) -> bool:
    """Local files only: `--offline`, or the Hugging Face hub's own `HF_HUB_OFFLINE=1`."""
    return requested or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def autocast(device: torch.device) -> Any:
    """Mixed precision on a GPU (bf16 where supported, else fp16); plain fp32 on the CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """The prepared images of `rows`, through `transform`, with each row's index in `labels`
    (-1 for a label not in the list)."""

    def __init__(
        self,
        root: Path,
        rows: Sequence[ManifestRow],
        transform: Callable[[Image.Image], torch.Tensor],
        labels: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.rows = list(rows)
        self.transform = transform
        self.index = {lb: i for i, lb in enumerate(labels)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.rows[i]
        path = self.root / row.image_path
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except OSError as e:
            raise UserError(
                f"cannot read {row.image_path} ({e}): rerun `vlm-classify prepare`"
            ) from None
        return self.transform(image), self.index.get(row.label, -1)


def loader(
    dataset: Dataset[Any],
    batch_size: int,
    workers: int,
    device: torch.device,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A DataLoader that decodes in `workers` processes and pins memory for a GPU
    (`drop_last`: without the last batch when it is short)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
        drop_last=drop_last,
    )


def gpu_peak_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by torch on `device`, in MB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def versions(**extra: str) -> dict[str, str]:
    """torch's version (and CUDA's when used), plus the provider's libraries."""
    out: dict[str, str] = {"torch": str(torch.__version__)}
    if torch.version.cuda and torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out | extra


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: set its flag for the load, so
    open_clip (which has no local-files-only argument) reads the hub's cache and never the
    network, as transformers does with `local_files_only`."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_error(spec: str, e: BaseException, offline: bool, fetch: str, also: str = "") -> UserError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    where = " (offline: local files and the hub's cache only)" if offline else ""
    hint = f"; fetch it with `{fetch}`" if fetch else ""
    return UserError(f"cannot load {spec}{where}: {first}{hint}{also}")
