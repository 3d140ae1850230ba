"""A linear probe: multinomial logistic regression on an image encoder's cached embeddings, its
regularisation chosen on val, saved as `probe.safetensors` (the head's weights) and `probe.json`
(what it was trained on). It knows the encoder only through `embeddings.ImageEncoder`, so any
encoder whose embeddings are cached can have one; `clip.make_trainer` builds it for `clip/`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...dataset.manifest import ManifestRow
from ...errors import DataError, UserError
from ...files import write_bytes_atomic
from ...training import Epoch, TrainResult
from . import common
from .embeddings import Embedder, Head

PROBE_JSON = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
PROBE_FORMAT = "vlm-classify/linear-probe"
C_GRID = tuple(round(float(c), 6) for c in np.logspace(-2, 4, 10))
"""Inverse L2 strengths the probe tries, weakest regularisation last (warm-started in order)."""
MAX_ITER = 1000
SMALL_PROBE_FLOPS = 10_000_000
"""Below this N x D x K, the probe's fits run single-threaded BLAS (see `ProbeTrainer.fit`)."""


def load_probe(model_dir: Path, labels: Sequence[str], spec: str) -> tuple[dict[str, Any], Head]:
    """A saved probe's record and head; labels other than the current ones are one clear line."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    fix = "train the probe again (vlm-classify finetune) on this prepared folder"
    try:
        meta = json.loads((model_dir / PROBE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(model_dir / str(meta["weights"]))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise UserError(
            f"{spec}: {model_dir} holds no readable linear probe ({e}): {fix}"
        ) from None
    if meta.get("format") != PROBE_FORMAT:
        raise UserError(f"{spec}: {model_dir / PROBE_JSON} is not a {PROBE_FORMAT}: {fix}")
    trained = list(meta.get("labels", []))
    if trained != list(labels):
        diff = next(
            (f"{a!r} vs {b!r}" for a, b in zip(trained, labels, strict=False) if a != b),
            f"{len(trained)} vs {len(labels)} labels",
        )
        raise UserError(f"{spec} was trained on other labels than labels.txt ({diff}): {fix}")
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if (
        weight is None
        or bias is None
        or weight.shape[0] != len(labels)
        or bias.shape != (len(labels),)
    ):
        raise UserError(f"{spec}: {model_dir / PROBE_WEIGHTS} does not match its record: {fix}")
    return meta, Head(weight=weight, bias=bias)


def probe_head(clf: Any, classes: int) -> Head:
    """A fitted scikit-learn LogisticRegression as a softmax head over all `classes`: a binary
    fit's one logit z becomes the pair (-z/2, z/2), whose softmax is its sigmoid."""
    coef, intercept = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    if coef.shape[0] == 1:
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.array([-intercept[0], intercept[0]]) / 2,
        )
    if list(clf.classes_) != list(range(classes)):
        raise ValueError(f"fitted on classes {list(clf.classes_)}, expected all {classes}")
    # C order: scikit-learn's coef_ may be Fortran-ordered and safetensors writes raw buffers.
    weight = np.ascontiguousarray(coef, dtype=np.float32)
    return Head(weight=weight, bias=np.ascontiguousarray(intercept, dtype=np.float32))


class ProbeTrainer:
    """A linear probe: multinomial logistic regression on cached image embeddings, its
    regularisation chosen on val over `C_GRID`."""

    def __init__(self, embedder: Embedder, labels: Sequence[str], base_model: str) -> None:
        self.embedder = embedder
        self.encoder = embedder.encoder
        self.device = str(self.encoder.device)
        self.labels = list(labels)
        self.base_model = base_model
        """The model string of the encoder (`clip/...`): what `classify` loads to run the probe."""

    def fit(
        self,
        train: Sequence[ManifestRow],
        val: Sequence[ManifestRow],
        out: Path,
        on_epoch: Callable[[Epoch], None],
    ) -> TrainResult:
        """Embed (cached: an interrupted run resumes with what it had computed), fit one model per
        C on train, keep the best on val, save it into `out`."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, log_loss
        from threadpoolctl import threadpool_limits

        k = len(self.labels)
        x_train, y_train = self.embedder.embed(train), self._targets(train)
        x_val, y_val = self.embedder.embed(val), self._targets(val)
        self.encoder.close()  # the embeddings are all it needed
        missing = sorted(set(range(k)) - set(y_train.tolist()))
        if missing:
            raise UserError(
                f"label {self.labels[missing[0]]!r} has no train images: the probe cannot learn "
                "it; prepare again with more images per class"
            )
        clf = LogisticRegression(max_iter=MAX_ITER, warm_start=True)
        # An lbfgs step is a few products of x_train with a D x K matrix: below ~10 MFLOP, waking
        # BLAS threads costs more than it saves (10x slower on a busy 2-core machine).
        small = x_train.shape[0] * x_train.shape[1] * k < SMALL_PROBE_FLOPS
        blas_threads = 1 if small else None
        curves: list[Epoch] = []
        best: tuple[Epoch, float, Head] | None = None
        not_converged: list[float] = []
        for i, c in enumerate(C_GRID, start=1):
            t0 = time.perf_counter()
            clf.set_params(C=c)
            with warnings.catch_warnings(), threadpool_limits(blas_threads, "blas"):
                warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in details
                clf.fit(x_train, y_train)
            if int(np.max(clf.n_iter_)) >= MAX_ITER:
                not_converged.append(c)
            head = probe_head(clf, k)
            p_val = head.probs(x_val)
            epoch = Epoch(
                epoch=i,
                train_loss=round(float(log_loss(y_train, head.probs(x_train), labels=range(k))), 6),
                val_loss=round(float(log_loss(y_val, p_val, labels=range(k))), 6),
                val_accuracy=round(float(accuracy_score(y_val, p_val.argmax(axis=1))), 6),
                seconds=round(time.perf_counter() - t0, 3),
            )
            on_epoch(epoch)
            curves.append(epoch)
            if best is None or _better(epoch, best[0]):
                best = (epoch, c, head)
        assert best is not None  # C_GRID is not empty
        chosen, c, head = best
        self._save(out, c, head)
        fitting = sum(e.seconds or 0.0 for e in curves)
        speed = self.embedder.speed()  # what embedding train and val costs, cached or not
        embedding = (len(train) + len(val)) * speed[1] / speed[0] if speed else None
        return TrainResult(
            curves=curves,
            best_epoch=chosen.epoch,
            compute_s=None if embedding is None else round(fitting + embedding, 3),
            details={
                "method": "linear probe: multinomial logistic regression (scikit-learn, lbfgs) "
                "on L2-normalised image embeddings",
                "C_grid": list(C_GRID),
                "C": c,
                "selection": "the best val accuracy; ties to the lower val log-loss, then the "
                "smaller C",
                "refit": "none: the kept model was fitted on train alone; val only chose C",
                "not_converged_C": not_converged,
                "base_model": self.base_model,
                "encoder": self.encoder.identity,
                "embedding_dim": int(head.weight.shape[1]),
                "embeddings": {
                    "computed": self.embedder.computed,
                    "cached": self.embedder.reused,
                },
            },
        )

    def _targets(self, rows: Sequence[ManifestRow]) -> np.ndarray:
        index = {lb: i for i, lb in enumerate(self.labels)}
        unknown = next((r for r in rows if r.label not in index), None)
        if unknown is not None:
            raise DataError(
                f"{unknown.id}: label {unknown.label!r} is not in labels.txt: rerun "
                "`vlm-classify prepare`"
            )
        return np.array([index[r.label] for r in rows], dtype=np.int64)

    def _save(self, out: Path, c: float, head: Head) -> None:
        """The weights (safetensors), then the record that makes the folder a probe."""
        from safetensors.numpy import save

        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": head.weight, "bias": head.bias}
        write_bytes_atomic(
            out / PROBE_WEIGHTS, save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
        )
        meta = {
            "format": PROBE_FORMAT,
            "version": 1,
            "base_model": self.base_model,
            "encoder": self.encoder.identity,
            "labels": self.labels,
            "C": c,
            "classes": int(head.weight.shape[0]),
            "embedding_dim": int(head.weight.shape[1]),
            "weights": PROBE_WEIGHTS,
            "input": "the base model's L2-normalised image embedding x",
            "output": "softmax(x @ weight.T + bias)",
        }
        write_bytes_atomic(out / PROBE_JSON, (json.dumps(meta, indent=2) + "\n").encode())

    def gpu_peak_mb(self) -> float | None:
        return common.gpu_peak_mb(self.encoder.device)

    def versions(self) -> dict[str, str]:
        import sklearn

        return self.encoder.versions() | {"scikit-learn": sklearn.__version__}


def _better(a: Epoch, b: Epoch) -> bool:
    return (a.val_accuracy or 0.0, -(a.val_loss or 0.0)) > (
        b.val_accuracy or 0.0,
        -(b.val_loss or 0.0),
    )


__all__ = [
    "C_GRID",
    "PROBE_FORMAT",
    "PROBE_JSON",
    "PROBE_WEIGHTS",
    "ProbeTrainer",
    "load_probe",
    "probe_head",
]
