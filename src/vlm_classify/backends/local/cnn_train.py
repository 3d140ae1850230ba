"""Training a `cnn/` model: fine-tuning a timm CNN from ImageNet weights when they can be had
(else from scratch, saying so), with AdamW, a cosine schedule and timm's augmentation.

Training writes into a model directory (`cnn_model`): `checkpoint.pt` after every epoch, then the
best epoch's `model.safetensors` and `cnn.json` when it finishes. Each epoch's randomness is
seeded from (seed, epoch), so a run resumed from its checkpoint repeats exactly what the
uninterrupted one would have done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import timm.data
import timm.models
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ...dataset.manifest import ManifestRow
from ...errors import UserError
from ...files import atomic_path, write_text_atomic
from ...training import Epoch, TrainOptions, TrainResult
from . import common
from .cnn_model import (
    CARD,
    CHECKPOINT,
    WEIGHTS,
    Init,
    ModelCard,
    library_versions,
    place,
    read_card,
    resolve_device,
    to_device,
)

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-3
"""AdamW's peak learning rate: right for fine-tuning a small CNN from ImageNet weights."""
DEFAULT_BATCH_SIZE = 32
WEIGHT_DECAY = 0.05
"""timm's usual AdamW decay; timm's optimizer factory spares biases and norm layers."""
MIN_LR_RATIO = 0.01
"""The cosine schedule ends (and its warmup starts) at this fraction of the peak rate."""


class CnnTrainer:
    """Fine-tunes a timm CNN: AdamW, cosine schedule per step, timm's standard augmentation,
    the best val accuracy kept (ties: the lower val loss), a checkpoint after every epoch."""

    def __init__(
        self, architecture: str, labels: list[str], prepared_dir: Path, options: TrainOptions
    ) -> None:
        self.architecture = architecture
        self.labels = list(labels)
        self.root = prepared_dir
        self.epochs = options.epochs or DEFAULT_EPOCHS
        self.batch_size = options.batch_size or DEFAULT_BATCH_SIZE
        self.lr = options.lr or DEFAULT_LR
        self.seed = options.seed
        self.settings = options.local
        self._device = resolve_device(options.local.device)
        self.device = str(self._device)

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(self._device)

    def versions(self) -> dict[str, str]:
        return library_versions()

    def fingerprint(
        self, train: Sequence[ManifestRow], val: Sequence[ManifestRow]
    ) -> dict[str, Any]:
        """What a run's result depends on (not where it runs)."""
        return {
            "architecture": self.architecture,
            "labels": self.labels,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": WEIGHT_DECAY,
            "seed": self.seed,
            "train": _rows_digest(train),
            "val": _rows_digest(val),
        }

    def fit(
        self,
        train: Sequence[ManifestRow],
        val: Sequence[ManifestRow],
        out: Path,
        on_epoch: Callable[[Epoch], None],
    ) -> TrainResult:
        out = Path(out)
        if len(train) < 2:
            raise UserError(f"the train split has {len(train)} image: a CNN needs at least 2")
        fingerprint = self.fingerprint(train, val)
        if (out / CARD).is_file():  # finished: nothing to do
            card = read_card(out, f"arm {out.parent.name!r}")
            _check_same(card.fingerprint, fingerprint, out, finished=True)
            (out / CHECKPOINT).unlink(missing_ok=True)
            return TrainResult(
                curves=card.curves,
                best_epoch=card.best_epoch,
                details=card.details,
                compute_s=_compute_s(card.curves),
            )
        out.mkdir(parents=True, exist_ok=True)
        state = self._load_checkpoint(out, fingerprint)
        if state is None:
            torch.manual_seed(self.seed)
            model, init = init_model(
                self.architecture, len(self.labels), common.offline(self.settings.offline)
            )
        else:
            model = timm.create_model(
                self.architecture, pretrained=False, num_classes=len(self.labels)
            )
            model.load_state_dict(state["model"])
            init = Init.model_validate(state["init"])
        model = place(model, self._device)
        data_config = timm.data.resolve_model_data_config(model)
        train_tf = timm.data.create_transform(**data_config, is_training=True)
        eval_tf = timm.data.create_transform(**data_config, is_training=False)

        # A trailing batch of one image is dropped: BatchNorm cannot train on a single image.
        drop_last = self.batch_size > 1 and len(train) % self.batch_size == 1
        steps = len(train) // self.batch_size + (1 if len(train) % self.batch_size > 1 else 0)
        optimizer = create_optimizer_v2(model, "adamw", lr=self.lr, weight_decay=WEIGHT_DECAY)
        warmup = steps if self.epochs >= 5 else 0
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=self.epochs * steps,
            lr_min=self.lr * MIN_LR_RATIO,
            warmup_t=warmup,
            warmup_lr_init=self.lr * MIN_LR_RATIO,
            t_in_epochs=False,
        )
        precision = common.autocast(self._device)
        fp16 = (
            self._device.type == "cuda" and getattr(precision, "fast_dtype", None) == torch.float16
        )
        scaler = torch.amp.GradScaler(self._device.type, enabled=fp16)

        curves: list[Epoch] = []
        best: dict[str, Any] = {"epoch": 0, "val_accuracy": -1.0, "val_loss": math.inf}
        best_weights: dict[str, torch.Tensor] = {}
        seen, busy, start = 0, 0.0, 1
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:  # empty when saved where the scaler was off (CPU, bf16)
                scaler.load_state_dict(state["scaler"])
            curves = [Epoch.model_validate(e) for e in state["curves"]]
            best, best_weights = state["best"], state["best_model"]
            seen, busy, start = state["seen"], state["busy_s"], state["epoch"] + 1
            log.info("%s: resuming at epoch %d of %d", out, start, self.epochs)

        train_set = common.ImageDataset(self.root, train, train_tf, self.labels)
        val_batches = common.loader(
            common.ImageDataset(self.root, val, eval_tf, self.labels),
            self.batch_size,
            self.settings.workers,
            self._device,
        )
        for epoch in range(start, self.epochs + 1):
            t0 = time.perf_counter()
            _seed(self.seed + epoch)  # augmentation and order: the same whether resumed or not
            batches = common.loader(
                train_set,
                self.batch_size,
                self.settings.workers,
                self._device,
                shuffle=True,
                seed=self.seed + epoch,
                drop_last=drop_last,
            )
            train_loss, n = self._train_epoch(
                model, batches, optimizer, scheduler, scaler, (epoch - 1) * steps
            )
            seen, busy = seen + n, busy + time.perf_counter() - t0
            val_loss, val_accuracy = self._evaluate(model, val_batches)
            e = Epoch(
                epoch=epoch,
                train_loss=round(train_loss, 6),
                val_loss=round(val_loss, 6),
                val_accuracy=round(val_accuracy, 6),
                seconds=round(time.perf_counter() - t0, 3),
            )
            curves.append(e)
            if (val_accuracy, -val_loss) > (best["val_accuracy"], -best["val_loss"]):
                best = {"epoch": epoch, "val_accuracy": val_accuracy, "val_loss": val_loss}
                best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            _save(
                out / CHECKPOINT,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "best": best,
                    "best_model": best_weights,
                    "curves": [c.model_dump() for c in curves],
                    "init": init.model_dump(),
                    "seen": seen,
                    "busy_s": busy,
                },
            )
            on_epoch(e)

        details = {
            "architecture": self.architecture,
            "params": sum(p.numel() for p in model.parameters()),
            "pretrained": init.pretrained,
            "pretrained_source": init.source,
            "pretrained_on": pretrained_on(self.architecture) if init.pretrained else None,
            "pretrained_note": init.note,
            "data_config": _jsonable(data_config),
            "augmentation": [str(t) for t in getattr(train_tf, "transforms", [train_tf])],
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "optimizer": f"adamw (timm), weight decay {WEIGHT_DECAY}",
            "schedule": f"cosine per step to {MIN_LR_RATIO} x lr, {warmup} warmup steps",
            "selection": "best val accuracy (ties: lower val loss)",
            "mixed_precision": str(precision.fast_dtype) if self._device.type == "cuda" else None,
            "train_images_per_s": round(seen / busy, 2) if busy else None,
            "resumed_at_epoch": start if state is not None else None,
        }
        card = ModelCard(
            architecture=self.architecture,
            labels=self.labels,
            data_config=_jsonable(data_config),
            init=init,
            best_epoch=best["epoch"],
            best_val_accuracy=round(best["val_accuracy"], 6),
            fingerprint=fingerprint,
            curves=curves,
            details=details,
        )
        with atomic_path(out / WEIGHTS) as weights_tmp:
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in best_weights.items()},
                str(weights_tmp),
                metadata={"epoch": str(best["epoch"]), "architecture": self.architecture},
            )
        # written last: its presence means "finished"
        write_text_atomic(out / CARD, card.model_dump_json(indent=2) + "\n")
        (out / CHECKPOINT).unlink(missing_ok=True)
        return TrainResult(
            curves=curves,
            best_epoch=card.best_epoch,
            details=details,
            compute_s=_compute_s(curves),
        )

    def _train_epoch(
        self,
        model: nn.Module,
        batches: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: CosineLRScheduler,
        scaler: torch.amp.GradScaler,
        updates: int,
    ) -> tuple[float, int]:
        """One pass over the train split; the mean loss and the images seen."""
        model.train()
        total, count = 0.0, 0
        for images, targets in batches:
            n = int(targets.shape[0])
            with common.autocast(self._device):
                loss = F.cross_entropy(
                    model(to_device(images, self._device)), targets.to(self._device)
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            updates += 1
            scheduler.step_update(updates)
            total += float(loss.detach()) * n
            count += n
        return total / max(count, 1), count

    def _evaluate(self, model: nn.Module, batches: Any) -> tuple[float, float]:
        """The val split's mean loss and accuracy."""
        model.eval()
        loss, correct, count = 0.0, 0, 0
        with torch.inference_mode(), common.autocast(self._device):
            for images, targets in batches:
                logits = model(to_device(images, self._device)).float()
                targets = targets.to(self._device)
                loss += float(F.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(dim=-1) == targets).sum())
                count += int(targets.shape[0])
        return loss / count, correct / count

    def _load_checkpoint(self, out: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
        path = out / CHECKPOINT
        if not path.is_file():
            return None
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged file
            raise UserError(
                f"{path} is unreadable ({str(e).splitlines()[0]}): delete it to train from the start"
            ) from None
        _check_same(state["fingerprint"], fingerprint, out, finished=False)
        return state


def init_model(architecture: str, num_classes: int, offline: bool) -> tuple[nn.Module, Init]:
    """The architecture with ImageNet weights when they can be had (offline: from the local
    cache only), else from scratch with a note saying why; never an error for want of weights."""
    cfg = timm.models.get_pretrained_cfg(architecture, allow_unregistered=False)
    hub_id = getattr(cfg, "hf_hub_id", None)
    url = getattr(cfg, "url", None)
    if not (hub_id or url):
        return _scratch(
            architecture, num_classes, f"timm has no pretrained weights for {architecture}"
        )
    if offline:
        cached = cached_weights(cfg)
        if cached is None:
            return _scratch(
                architecture,
                num_classes,
                f"offline (--offline or HF_HUB_OFFLINE=1) and the weights of {architecture} "
                f"({hub_id or url}) are not in the local cache; run once online to fetch them",
            )
        model = timm.create_model(
            architecture,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay={"file": cached},
        )
        return model, Init(pretrained=True, source=cached)
    try:
        model = timm.create_model(architecture, pretrained=True, num_classes=num_classes)
    except Exception as e:  # the hub, a proxy, a URL or a broken cache: any can fail here
        return _scratch(
            architecture,
            num_classes,
            f"could not load the weights of {architecture} ({hub_id or url}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        )
    return model, Init(pretrained=True, source=hub_id or url)


def cached_weights(cfg: Any) -> str | None:
    """The pretrained weight file of a timm pretrained config in the local caches, if there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import get_cache_dir

    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for name in (cfg.hf_hub_filename or "model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url:
        path = Path(get_cache_dir()) / os.path.basename(cfg.url.split("?")[0])
        if path.is_file():
            return str(path)
    return None


def _scratch(architecture: str, num_classes: int, why: str) -> tuple[nn.Module, Init]:
    log.warning("cnn/%s: training from scratch: %s", architecture, why)
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    return model, Init(pretrained=False, note=f"trained from scratch: {why}")


IMAGENET_TAGS = {
    "in1k": "imagenet-1k",
    "in12k": "imagenet-12k",
    "in21k": "imagenet-21k",
    "inw21k": "imagenet-21k",
    "in22k": "imagenet-22k",
}
"""The ImageNet sets timm's weight tags name (`lamb_in1k`, `augreg_in21k_ft_in1k`, `fb_inw21k`)."""


def pretrained_on(architecture: str) -> str | None:
    """The data timm's weights for `architecture` were trained on, read from their weight tag
    (timm's pretrained config has no field for it): the ImageNet sets the tag names, in training
    order (`in22k_ft_in1k`: "imagenet-22k, imagenet-1k"), else the tag itself (`openai`)."""
    cfg = timm.models.get_pretrained_cfg(architecture, allow_unregistered=False)
    tag = str(getattr(cfg, "tag", None) or "")
    sets = dict.fromkeys(IMAGENET_TAGS[t] for t in tag.split("_") if t in IMAGENET_TAGS)
    return ", ".join(sets) or tag or None


# --- helpers -----------------------------------------------------------------------------------


def _seed(seed: int) -> None:
    random.seed(seed)  # timm's random-resized crop draws from Python's generator
    torch.manual_seed(seed)


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write temp then rename: a kill leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _check_same(old: dict[str, Any], new: dict[str, Any], out: Path, finished: bool) -> None:
    if old == new:
        return
    diff = ", ".join(
        f"{k} {_short(old.get(k))}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    )
    arm = out.parent.name
    if finished:
        raise UserError(
            f"arm {arm!r} already holds a cnn/ model trained with other settings ({diff}): "
            "train with another --name"
        )
    raise UserError(
        f"arm {arm!r} holds an unfinished cnn/ training run with other settings ({diff}): rerun "
        f"with those settings to resume it, or train with another --name (or delete {out})"
    )


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:
        return "of another sample"  # a digest of the train or val split
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} labels]"
    return repr(value)


def _rows_digest(rows: Sequence[ManifestRow]) -> str:
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: r.id):
        h.update(json.dumps([r.id, r.label, r.image_sha256]).encode() + b"\n")
    return h.hexdigest()


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "CnnTrainer",
    "cached_weights",
    "init_model",
    "pretrained_on",
]


def _compute_s(curves: Sequence[Epoch]) -> float | None:
    """The job's training time: every epoch's own seconds, once each (a resumed run counts the
    epochs of every session; a finished run rerun counts nothing new)."""
    seconds = [e.seconds for e in curves if e.seconds is not None]
    return round(sum(seconds), 3) if curves and len(seconds) == len(curves) else None
