"""Local training, behind one small interface: fit on the train split, select on val, save, resume.

A provider module (`backends/local/clip.py`, `cnn.py`) offers `make_trainer(ref, labels,
prepared_dir, options)`; `train_local` runs it and records the job in
`DIR/arms/NAME/finetune.json` like a cloud fine-tune: its `fine_tuned_model` (`PROVIDER/arm:NAME`)
is a model string `classify` accepts as it is, and the report reads its training curves.
"""

from __future__ import annotations

import csv
import hashlib
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from . import __version__
from .arms import arm_dir, check_arm_name, read_job, write_job
from .backends import registry
from .backends.base import LocalSettings
from .dataset.manifest import ManifestRow, load_sample
from .errors import UserError
from .files import atomic_open
from .runner import peak_rss_mb

MODEL_DIR = "model"
"""Where a local job keeps its trained model, under `DIR/arms/NAME/`."""
CURVES_CSV = "curves.csv"
ARM_PREFIX = "arm:"
"""`clip/arm:NAME`: the model trained by the job recorded in arm NAME of the prepared dir."""


class TrainOptions(BaseModel):
    """A local training job's settings; saved in finetune.json."""

    model: str
    """The base model, `clip/...` (a linear probe on its image embeddings) or `cnn/...`."""
    name: str
    """The arm that records the job (its folder under `DIR/arms/`)."""
    epochs: int | None = Field(None, ge=1, le=10_000)
    """Passes over the train split (None: the provider's default)."""
    batch_size: int | None = Field(None, ge=1, le=4096)
    """Images per step (None: the provider's default)."""
    lr: float | None = Field(None, gt=0)
    """Learning rate (None: the provider's default)."""
    shots: int | None = Field(None, ge=1)
    """Train on this many images per class only (a nested, seeded subset: `curve.nested_subset`);
    None: the whole train split."""
    lora_rank: int | None = Field(None, ge=1, le=1024)
    """`hf/`: the LoRA adapter's rank (None: the provider's default, 16)."""
    seed: int = 42
    local: LocalSettings = Field(default_factory=LocalSettings)


class Epoch(BaseModel):
    """One epoch's figures, as the training-curve plot reads them."""

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    seconds: float | None = None


class TrainResult(BaseModel):
    """What a trainer returns once the best model is saved under `out`."""

    curves: list[Epoch]
    best_epoch: int
    """The epoch whose model was kept (the best val accuracy)."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific record: the regularisation chosen, augmentation, pretrained or not..."""
    compute_s: float | None = None
    """Seconds of compute the whole job takes on this device, whatever this session did (a
    resumed run, a rerun with nothing left to do, embeddings already cached): its cost. None:
    the session's wall time is used."""


class LocalTrainer(Protocol):
    """Trains one model on this machine."""

    device: str

    def fit(
        self,
        train: Sequence[ManifestRow],
        val: Sequence[ManifestRow],
        out: Path,
        on_epoch: Callable[[Epoch], None],
    ) -> TrainResult:
        """Train on `train`, select on `val`, save the best model into `out` (a directory that
        `make_backend` loads from `PROVIDER/arm:NAME`), resuming from a checkpoint in `out` if
        an earlier run was interrupted."""
        ...

    def gpu_peak_mb(self) -> float | None: ...

    def versions(self) -> dict[str, str]: ...


def resolve_arm_model(name: str, prepared_dir: Path) -> Path | None:
    """The model directory of `arm:NAME` (None when `name` is not of that form); an arm that
    holds no trained model is one clear line."""
    if not name.startswith(ARM_PREFIX):
        return None
    arm = name[len(ARM_PREFIX) :]
    path = arm_dir(prepared_dir, arm) / MODEL_DIR
    if not path.is_dir():
        raise UserError(
            f"arm {arm!r} holds no trained model ({path} is missing): train one with "
            f"`vlm-classify finetune {prepared_dir} --model PROVIDER/BASE --name {arm}` first"
        )
    return path


def model_files_identity(name: str, prepared_dir: Path) -> str | None:
    """What a local model's files are now (names, sizes, modification times), for `arm:NAME` and
    folders; None for a hub name. An arm records it, so a model trained again or replaced under
    the same name is not mixed with the answers of the one before."""
    path = resolve_arm_model(name, prepared_dir)
    if path is None:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return None
        path = folder
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.name.startswith(".") and f.name != "checkpoint.pt":
            stat = f.stat()
            h.update(
                f"{f.relative_to(path).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:16]


def train_local(
    prepared_dir: Path,
    options: TrainOptions,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> dict[str, Any]:
    """Train `options.model` on the train split, selected on val; record and return finetune.json."""
    prepared_dir = Path(prepared_dir)
    check_arm_name(options.name)
    ref, provider = registry.parse(options.model)
    if provider.kind != "local":
        raise ValueError(f"{ref} is not a local model")
    sample = load_sample(prepared_dir)
    out = arm_dir(prepared_dir, options.name)
    previous = read_job(out)
    hyper = options.model_dump(exclude={"model", "name", "local"})
    for key in ("lora_rank", "shots"):  # set by few jobs: older records lack the keys
        if hyper.get(key) is None:
            hyper.pop(key, None)
    if previous and (
        previous.get("base_model") != str(ref) or previous.get("hyperparameters") != hyper
    ):
        raise UserError(
            f"arm {options.name!r} already records a job of {previous.get('base_model')} with "
            f"{previous.get('hyperparameters')}: train this one under another --name"
        )
    if previous.get("sample") not in (None, sample.identity):
        raise UserError(
            f"arm {options.name!r} trained on another sample of {prepared_dir} (prepared again "
            "since): train again with another --name"
        )
    if previous.get("status") == "succeeded" and (out / MODEL_DIR).is_dir():
        return previous  # trained already, with these settings on this sample: nothing to redo
    train, val = sample.split("train"), sample.split("val")
    if options.shots is not None:
        from .curve import nested_subset

        train = nested_subset(train, options.shots, options.seed)
    module = provider.load()
    trainer: LocalTrainer = module.make_trainer(ref, sample.labels, prepared_dir, options)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t0 = time.perf_counter()
    result = trainer.fit(train, val, out / MODEL_DIR, on_epoch or (lambda _e: None))
    wall = time.perf_counter() - t0
    if not getattr(trainer, "is_main_process", True):
        return {}  # one of several processes (accelerate launch): the main one records
    _write_curves(out / CURVES_CSV, result.curves)
    record = {
        "provider": ref.provider,
        "base_model": str(ref),
        "fine_tuned_model": f"{ref.provider}/{ARM_PREFIX}{options.name}",
        "status": "succeeded",
        "sample": sample.identity,
        "trained_images": len(train),
        "val_images": len(val),
        "hyperparameters": hyper,
        "local": options.local.model_dump(),
        "best_epoch": result.best_epoch,
        "best_val_accuracy": next(
            (e.val_accuracy for e in result.curves if e.epoch == result.best_epoch), None
        ),
        "curves": [e.model_dump() for e in result.curves],
        "results_csv": CURVES_CSV,
        "details": result.details,
        "wall_s": round(wall, 3),
        "compute_s": result.compute_s if result.compute_s is not None else round(wall, 3),
        "hardware": {
            "device": trainer.device,
            "price_per_hour": options.local.price_per_hour(trainer.device),
            "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": trainer.gpu_peak_mb(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
        },
        "versions": {"vlm_classify": __version__, **trainer.versions()},
        "emulated": False,
        "created_at": previous.get("created_at", started),
        "finished_at": time.time(),
        "evaluate_with": (
            f"vlm-classify classify {prepared_dir} --model {ref.provider}/{ARM_PREFIX}"
            f"{options.name} --name {options.name}-eval"
        ),
    }
    write_job(out, record)
    return record


def _write_curves(path: Path, curves: list[Epoch]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(Epoch.model_fields), lineterminator="\n")
        w.writeheader()
        for e in curves:
            w.writerow(e.model_dump())


__all__ = [
    "ARM_PREFIX",
    "Epoch",
    "LocalTrainer",
    "TrainOptions",
    "TrainResult",
    "resolve_arm_model",
    "train_local",
]
