"""`cnn/`: a timm image classifier (the study's MobileNetV3-Small baseline), trained here.

A CNN has no zero-shot: `cnn/ARCH` (a timm architecture, optionally with a weight tag,
`cnn/mobilenetv3_small_100` or `cnn/mobilenetv3_small_100.lamb_in1k`) is what `finetune` trains,
from ImageNet weights when they can be had, else from scratch, saying so. `cnn/arm:NAME` (or the
path of a model directory) is the trained model that `classify` runs.

This module is the provider: the backend that classifies with a trained model, and the
`make_backend` / `make_trainer` the registry calls. The model's names and directory format are
`cnn_model`'s; the training loop, its checkpoints and resuming are `cnn_train`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import timm.data
import torch
from torch import nn

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...models import ModelRef
from ...training import TrainOptions
from ..base import LocalSettings, Prediction, prediction_from_scores
from . import common
from .cnn_model import (
    WEIGHTS,
    check_architecture,
    library_versions,
    model_dir,
    place,
    read_card,
    resolve_device,
    to_device,
)
from .cnn_train import CnnTrainer

# --- classify ----------------------------------------------------------------------------------


def make_backend(
    ref: ModelRef, labels: list[str], prepared_dir: Path, settings: LocalSettings
) -> CnnBackend:
    """The trained model `ref` names, ready to classify `prepared_dir`'s images."""
    path = model_dir(ref, Path(prepared_dir))
    if path is None:
        check_architecture(ref.name)
        raise UserError(
            f"{ref} has no zero-shot: train it first with `vlm-classify finetune {prepared_dir} "
            f"--model {ref} --name cnn`, then classify cnn/arm:cnn"
        )
    card = read_card(path, str(ref))
    if card.labels != list(labels):
        missing = sorted(set(labels) - set(card.labels))
        extra = sorted(set(card.labels) - set(labels))
        parts = [f"not in the model: {_few(missing)}"] * bool(missing)
        parts += [f"not in this sample: {_few(extra)}"] * bool(extra)
        raise UserError(
            f"{ref} was trained on other labels than {prepared_dir}'s "
            f"({'; '.join(parts) or 'the same ones in another order'}): train it again on "
            "this sample"
        )
    device = resolve_device(settings.device)
    model = timm.create_model(card.architecture, pretrained=False, num_classes=len(labels))
    safetensors.torch.load_model(model, path / WEIGHTS, device="cpu")
    transform = timm.data.create_transform(**_tuples(card.data_config), is_training=False)
    return CnnBackend(
        str(ref), model, transform, list(labels), Path(prepared_dir), device, settings
    )


class CnnBackend:
    """A trained timm classifier: a batch of images in, softmax distributions out."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        transform: Callable[[Any], torch.Tensor],
        labels: list[str],
        root: Path,
        device: torch.device,
        settings: LocalSettings,
    ) -> None:
        self.name = name
        self.device = str(device)
        self._device = device
        self._model: nn.Module | None = place(model, device).eval()
        self._transform = transform
        self._labels = labels
        self._root = root
        self._workers = settings.workers

    def classify_batch(self, items: Sequence[ManifestRow]) -> list[Prediction]:
        if self._model is None:
            raise RuntimeError(f"{self.name} is closed")
        dataset = common.ImageDataset(self._root, items, self._transform, self._labels)
        # One batch: the workers (if any) share its decoding, each a slice.
        per_worker = math.ceil(len(items) / max(1, self._workers)) or 1
        batches = common.loader(dataset, per_worker, self._workers, self._device)
        probs: list[torch.Tensor] = []
        with torch.inference_mode(), common.autocast(self._device):
            for images, _ in batches:
                logits = self._model(to_device(images, self._device))
                probs.append(logits.float().softmax(dim=-1).cpu())
        return [prediction_from_scores(self._labels, p) for p in torch.cat(probs).tolist()]

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(self._device)

    def versions(self) -> dict[str, str]:
        return library_versions()

    def close(self) -> None:
        self._model = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


# --- train -------------------------------------------------------------------------------------


def make_trainer(
    ref: ModelRef, labels: list[str], prepared_dir: Path, options: TrainOptions
) -> CnnTrainer:
    """A trainer of architecture `ref` on the prepared sample's labels."""
    if ref.name.startswith("arm:"):
        raise UserError(
            f"{ref} is a trained model: finetune starts from an architecture, e.g. "
            "cnn/mobilenetv3_small_100"
        )
    check_architecture(ref.name)
    return CnnTrainer(ref.name, labels, Path(prepared_dir), options)


# --- helpers -----------------------------------------------------------------------------------


def _few(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (
        f" and {len(names) - 3} more" if len(names) > 3 else ""
    )


def _tuples(config: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


__all__ = ["CnnBackend", "make_backend", "make_trainer"]
