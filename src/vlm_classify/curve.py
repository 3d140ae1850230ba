"""Learning curves: how accuracy grows with labelled images per class, and where more stops paying.

`vlm-classify curve DIR --model M --shots 1,2,5,10,20,all` fine-tunes M on nested, seeded subsets
of the train split (each class's images in one seeded order; a size takes the first k of each
class, so every subset contains the smaller ones), always selecting on the full val split and
scoring on the full test split, so the points differ only in the training data. Local models
(`clip/`, `cnn/`, `hf/`) run for their compute time; the fine-tuning API costs money, so each
point's cost is printed first and nothing runs without `--yes`.

Each point: accuracy on the test split with its Wilson 95% interval. Across the points an inverse
power law, accuracy(n) = a - b n^(-c) (a <= 1, b >= 0, c > 0), is fitted by least squares; it
gives the sentence the report quotes: the gain measured between the last two sizes, and the size
by which the fitted curve has made 95% of its gain over the measured range.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from .arms import arm_dir, check_arm_name
from .backends import registry
from .backends.base import LocalSettings
from .dataset.manifest import ManifestRow, load_sample
from .errors import UserError
from .files import atomic_open, write_text_atomic

CURVES_DIR = "curves"
DEFAULT_SHOTS: list[int | Literal["all"]] = [1, 2, 5, 10, 20, "all"]


def nested_subset(rows: Sequence[ManifestRow], shots: int, seed: int) -> list[ManifestRow]:
    """The first `shots` images of each class in one seeded order per class (the order does not
    depend on `shots`, so a larger subset contains every smaller one), in manifest order."""
    by_class: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_class.setdefault(row.label, []).append(row)
    keep: set[str] = set()
    for label, items in by_class.items():
        order = sorted(items, key=lambda r: r.id)
        random.Random(f"{seed}:{label}").shuffle(order)
        keep.update(r.id for r in order[:shots])
    return [r for r in rows if r.id in keep]


def parse_shots(text: str) -> list[int | Literal["all"]]:
    """`1,2,5,10,all` as sizes; anything else is one line."""
    out: list[int | Literal["all"]] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise UserError(f"--shots {text!r}: give sizes per class such as 1,2,5,10,20,all")
    if not out:
        raise UserError("--shots: give at least one size, e.g. 1,2,5,10,all")
    return out


# --- the fit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """accuracy(n) = a - b * n**(-c), fitted to (images per class, accuracy) points."""

    a: float
    b: float
    c: float
    rmse: float

    def __call__(self, n: float | np.ndarray) -> Any:
        return self.a - self.b * np.power(n, -self.c)

    def n_for_share(self, share: float, n_min: float, n_max: float) -> float:
        """The size by which the curve has made `share` of its gain from n_min to n_max."""
        lo, hi = n_min ** (-self.c), n_max ** (-self.c)
        target = lo - share * (lo - hi)
        return float(target ** (-1 / self.c)) if target > 0 else float(n_max)


def fit_power_law(n: Sequence[float], acc: Sequence[float]) -> PowerLaw | None:
    """Least-squares fit of a - b n^(-c); None with fewer than 3 distinct sizes, or when the
    points do not rise (no gain to describe)."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(n, float), np.asarray(acc, float)
    if len(set(x.tolist())) < 3 or y[np.argmax(x)] <= y[np.argmin(x)]:
        return None

    def f(v: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a - b * np.power(v, -c)

    p0 = (min(1.0, float(y.max()) + 0.01), max(1e-3, float(y.max() - y.min())), 0.5)
    try:
        (a, b, c), _ = curve_fit(
            f, x, y, p0=p0, bounds=([0.0, 0.0, 1e-3], [1.0, 10.0, 5.0]), maxfev=20_000
        )
    except (RuntimeError, ValueError):
        return None
    rmse = float(np.sqrt(np.mean((f(x, a, b, c) - y) ** 2)))
    return PowerLaw(float(a), float(b), float(c), rmse)


def summary(points: Sequence[dict[str, Any]], fit: PowerLaw | None) -> str:
    """ "+1.2 pp from 20 to 40 a class; 95% of the gain by 15" (measured gain, fitted 95%)."""
    if len(points) < 2:
        return "one size measured: no curve"
    last, prev = points[-1], points[-2]
    gain = 100 * (last["accuracy"] - prev["accuracy"])
    text = f"{gain:+.1f} pp from {prev['shots']} to {last['shots']} a class"
    if fit is None:
        return text + " (no power law fits these points)"
    n95 = fit.n_for_share(0.95, points[0]["shots"], last["shots"])
    more = 100 * float(fit(2 * last["shots"]) - fit(last["shots"]))
    return (
        f"{text}; 95% of the gain by {n95:.0f} a class; doubling to {2 * last['shots']} a class "
        f"would add about {more:+.1f} pp (fitted, an extrapolation)"
    )


# --- running a curve -------------------------------------------------------------------------


class CurveOptions(BaseModel):
    """A learning curve's settings; saved in curve.json."""

    model: str
    """The base model: trained at each size (`clip/`, `cnn/`, `hf/` here; `openai/`, `azure/`
    through the fine-tuning API)."""
    name: str
    """The curve's name: DIR/curves/NAME, and the prefix of its arms (NAME.kK, NAME.kK.job)."""
    shots: list[int | Literal["all"]] = Field(default_factory=lambda: list(DEFAULT_SHOTS))
    seed: int = 42
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lora_rank: int | None = None
    lr_multiplier: float | None = None
    local: LocalSettings = Field(default_factory=LocalSettings)
    yes: bool = False
    """Run cloud fine-tunes (they cost money); without it only their costs are printed."""


@dataclass
class Point:
    shots: int
    train_images: int
    job: str
    arm: str
    cost_usd: float | None = None


class CurveResult(BaseModel):
    out_dir: Path
    points: list[dict[str, Any]]
    fit: dict[str, Any] | None
    summary: str
    ran: bool
    """False when only the plan (and its cost) was printed."""
    cost_usd: float | None = None


def plan(prepared_dir: Path, options: CurveOptions) -> tuple[list[Point], str]:
    """The sizes to train (distinct, ascending, capped at the smallest class) and the kind."""
    check_arm_name(options.name)
    ref, provider = registry.parse(options.model)
    sample = load_sample(prepared_dir)
    train = sample.split("train")
    per_class: dict[str, int] = {}
    for r in train:
        per_class[r.label] = per_class.get(r.label, 0) + 1
    most = max(per_class.values())
    sizes = sorted({most if s == "all" else min(int(s), most) for s in options.shots})
    points = []
    for k in sizes:
        n = len(nested_subset(train, k, options.seed))
        tag = f"{options.name}.k{k}"
        points.append(Point(k, n, f"{tag}.job", tag))
    if provider.kind == "remote":
        _price(prepared_dir, options, points, len(train))
    del ref
    return points, provider.kind


def _price(prepared_dir: Path, options: CurveOptions, points: list[Point], n_train: int) -> None:
    """Each cloud point's training cost (its share of the full train split's) plus the test
    split through the fine-tuned model, from the shipped prices."""
    from .estimate import EstimateOptions, estimate

    est = estimate(prepared_dir, EstimateOptions(model=options.model, epochs=options.epochs or 2))
    for p in points:
        training = est.training.cost_usd * p.train_images / n_train if est.training else 0.0
        test = est.finetuned.cost_usd if est.finetuned else 0.0
        p.cost_usd = round(training + test, 4)


def run_curve(
    prepared_dir: Path,
    options: CurveOptions,
    on_status: Callable[[str], None] | None = None,
) -> CurveResult:
    """Train and score every point not done yet (each is an ordinary job and arm, resumable),
    then fit and write DIR/curves/NAME/ (curve.json, curve.csv, curve.png)."""
    prepared_dir = Path(prepared_dir)
    say = on_status or (lambda _m: None)
    points, kind = plan(prepared_dir, options)
    out = prepared_dir / CURVES_DIR / options.name
    total = sum(p.cost_usd or 0.0 for p in points) if kind == "remote" else None
    if kind == "remote" and not options.yes:
        for p in points:
            say(f"{p.shots} a class ({p.train_images} images): about ${p.cost_usd:,.2f}")
        return CurveResult(out_dir=out, points=[], fit=None, summary="", ran=False, cost_usd=total)
    measured = []
    for p in points:
        say(f"{p.shots} a class: training on {p.train_images} images")
        model = _train(prepared_dir, options, p, kind, say)
        acc = _score(prepared_dir, options, p, model, kind)
        measured.append(acc)
        say(f"{p.shots} a class: accuracy {acc['accuracy']:.2%} on {acc['n']} test images")
    fit = fit_power_law([m["shots"] for m in measured], [m["accuracy"] for m in measured])
    text = summary(measured, fit)
    result = CurveResult(
        out_dir=out,
        points=measured,
        fit=None if fit is None else {"a": fit.a, "b": fit.b, "c": fit.c, "rmse": fit.rmse},
        summary=text,
        ran=True,
        cost_usd=total,
    )
    _write(out, options, result, fit)
    return result


def _train(
    prepared_dir: Path, options: CurveOptions, p: Point, kind: str, say: Callable[[str], None]
) -> str:
    if kind == "local":
        from .training import TrainOptions, train_local

        record = train_local(
            prepared_dir,
            TrainOptions(
                model=options.model,
                name=p.job,
                epochs=options.epochs,
                batch_size=options.batch_size,
                lr=options.lr,
                lora_rank=options.lora_rank,
                seed=options.seed,
                shots=p.shots,
                local=options.local,
            ),
        )
        return str(record["fine_tuned_model"])
    from .backends.openai.finetune import FinetuneOptions, finetune

    record = finetune(
        prepared_dir,
        FinetuneOptions(
            model=options.model,
            name=p.job,
            epochs=options.epochs or 2,
            lr_multiplier=options.lr_multiplier or 0.5,
            seed=options.seed,
            shots=p.shots,
        ),
        on_event=lambda ev: say(ev.message) if ev.kind == "status" else None,
    ).record
    if not record.get("fine_tuned_model"):
        raise UserError(f"the job of {p.job} ended {record.get('status')}: no model to score")
    return f"{options.model.partition('/')[0]}/{record['fine_tuned_model']}"


def _score(
    prepared_dir: Path, options: CurveOptions, p: Point, model: str, kind: str
) -> dict[str, Any]:
    from .classify import ClassifyOptions, classify

    result = classify(
        prepared_dir,
        ClassifyOptions(
            model=model,
            name=p.arm,
            local=options.local,
            prompt="full",
            answer="text" if kind == "remote" else "enum",
        ),
    )
    with (result.arm_dir / "predictions.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]  # an invalid answer is wrong
    from .metrics import accuracy_interval  # scipy: loaded when a curve is scored

    n, correct = len(rows), sum(r["correct"] == "1" for r in rows)
    lo, hi = accuracy_interval(correct, n)
    return {
        "shots": p.shots,
        "train_images": p.train_images,
        "arm": p.arm,
        "job": p.job,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "ci_low": lo,
        "ci_high": hi,
        "cost_usd": p.cost_usd,
        "compute_s": _compute_s(prepared_dir, p.job) if kind == "local" else None,
    }


def _compute_s(prepared_dir: Path, job: str) -> float | None:
    try:
        doc = json.loads((arm_dir(prepared_dir, job) / "finetune.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    value = doc.get("compute_s")
    return float(value) if isinstance(value, int | float) else None


def _write(out: Path, options: CurveOptions, result: CurveResult, fit: PowerLaw | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "options": options.model_dump(mode="json", exclude={"yes"}),
        "points": result.points,
        "fit": result.fit,
        "model": "accuracy(n) = a - b * n^(-c), n = train images per class (least squares)",
        "summary": result.summary,
        "interval": "Wilson score 95% per point",
    }
    with atomic_open(out / "curve.csv", "w", newline="", encoding="utf-8") as f:
        fields = ["shots", "train_images", "n", "correct", "accuracy", "ci_low", "ci_high"]
        w = csv.DictWriter(f, fieldnames=[*fields, "cost_usd", "compute_s", "arm"],
                           extrasaction="ignore", lineterminator="\n")  # fmt: skip
        w.writeheader()
        w.writerows(result.points)
    _plot(out / "curve.png", result.points, fit, options)
    write_text_atomic(out / "curve.json", json.dumps(doc, indent=2) + "\n")


def _plot(
    path: Path, points: Sequence[dict[str, Any]], fit: PowerLaw | None, options: CurveOptions
) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [p["shots"] for p in points]
    y = [100 * p["accuracy"] for p in points]
    err = [
        [100 * (p["accuracy"] - p["ci_low"]) for p in points],
        [100 * (p["ci_high"] - p["accuracy"]) for p in points],
    ]
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label="measured (95% interval)")
    if fit is not None and len(x) > 1:
        grid = np.geomspace(min(x), 2 * max(x), 100)
        ax.plot(grid, 100 * fit(grid), "--", label="fitted a - b n^-c")
    ax.set_xscale("log")
    ax.set_xlabel("train images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"learning curve: {options.model}")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


__all__ = [
    "CurveOptions",
    "CurveResult",
    "PowerLaw",
    "fit_power_law",
    "nested_subset",
    "parse_shots",
    "plan",
    "run_curve",
    "summary",
]
