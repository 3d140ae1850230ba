"""What a `cnn/` model is: its name (a timm architecture, optionally with a weight tag), its
directory on disk, and how it is placed on a device. Both the backend (`cnn`) and the trainer
(`cnn_train`) build on this; it imports neither.

A model directory holds `cnn.json` (architecture, labels, the timm data config, how it was
initialised and trained) and `model.safetensors` (the best epoch's weights). While training, it
also holds `checkpoint.pt` (see `cnn_train`); `cnn.json` is written last, so its presence means
the training finished.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import timm
import timm.models
import torch
from pydantic import BaseModel
from torch import nn

from ...errors import UserError
from ...models import ModelRef
from ...training import Epoch, resolve_arm_model
from . import common

FORMAT = "vlm-classify/cnn/1"
CARD = "cnn.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"


class Init(BaseModel):
    """Where a model's starting weights came from."""

    pretrained: bool
    source: str | None = None
    """The weights loaded (a hub id or a cached file), when pretrained."""
    note: str | None = None
    """Why it trained from scratch, when it did."""


class ModelCard(BaseModel):
    """`cnn.json`: everything needed to rebuild, run and describe a trained model."""

    format: str = FORMAT
    architecture: str
    labels: list[str]
    data_config: dict[str, Any]
    """timm's `resolve_model_data_config` of the model: `create_transform` rebuilds the eval
    preprocessing from it."""
    init: Init
    best_epoch: int
    best_val_accuracy: float | None
    fingerprint: dict[str, Any]
    """What defines the run (architecture, labels, data, hyperparameters): a rerun must match."""
    curves: list[Epoch]
    details: dict[str, Any]


# --- model strings and directories -------------------------------------------------------------


def check_architecture(name: str) -> None:
    """A timm architecture (and weight tag) or one line saying what timm has."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(
            f"cnn/{name}: timm {timm.__version__} has no architecture {name!r}{hint}; "
            "e.g. cnn/mobilenetv3_small_100"
        )
    try:
        timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        arch = name.partition(".")[0]
        tags = timm.list_pretrained(f"{arch}.*") or ["none"]
        raise UserError(
            f"cnn/{name}: timm has no weights tagged {name.partition('.')[2]!r} for {arch} "
            f"(it has {', '.join(tags)})"
        ) from None


def model_dir(ref: ModelRef, prepared_dir: Path) -> Path | None:
    """The trained model `ref` names (`arm:NAME` or a directory), or None for an architecture."""
    arm = resolve_arm_model(ref.name, prepared_dir)
    if arm is not None:
        return arm
    path = Path(ref.name).expanduser()
    if path.is_dir():
        return path / "model" if (path / "model" / CARD).is_file() else path
    if "/" in ref.name or os.sep in ref.name:
        raise UserError(
            f"{ref}: no directory {path}: a cnn/ path names a model directory written by "
            "finetune (DIR/arms/NAME/model), or write cnn/arm:NAME"
        )
    return None


def read_card(path: Path, spec: str) -> ModelCard:
    """The model card of a trained model directory; anything else is one line."""
    card = path / CARD
    if not card.is_file():
        if (path / CHECKPOINT).is_file():
            raise UserError(
                f"{spec}: its training did not finish ({path} holds a checkpoint only): rerun "
                "the same `vlm-classify finetune` command to resume it"
            )
        raise UserError(f"{spec}: {path} holds no cnn/ model (no {CARD})")
    try:
        model = ModelCard.model_validate_json(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"{spec}: {card} is unreadable ({str(e).splitlines()[0]}): train again"
        ) from None
    if model.format != FORMAT:
        raise UserError(f"{spec}: {card} is format {model.format!r}, not {FORMAT!r}: train again")
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{spec}: {path} lacks its weights ({WEIGHTS}): train again")
    return model


# --- devices -----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`common.resolve_device`, with a bare `cuda` pinned to the current GPU's index."""
    device = common.resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """On the device; channels-last on a GPU, where convolutions run faster that way."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images on the device, channels-last on a GPU (as `place` puts the model)."""
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def library_versions() -> dict[str, str]:
    """The libraries a `cnn/` model runs on."""
    import torchvision

    return common.versions(timm=timm.__version__, torchvision=torchvision.__version__)


__all__ = [
    "CARD",
    "CHECKPOINT",
    "FORMAT",
    "WEIGHTS",
    "Init",
    "ModelCard",
    "check_architecture",
    "library_versions",
    "model_dir",
    "place",
    "read_card",
    "resolve_device",
    "to_device",
]
