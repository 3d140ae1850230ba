"""`report`: compare the arms of a prepared directory and write results.csv, metrics.json, the
plots, report.md and a self-contained report.html."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from .. import __version__
from .. import pricing as price_table
from ..cost import (
    FAR_BEYOND,
    HOURS_PER_MONTH,
    ArmUsage,
    ComputeUsage,
    ServingMode,
    arm_cost,
    billed_against_estimate,
    break_even,
    monthly,
    per_correct_at_volume,
    volume_grid,
)
from ..errors import UserError
from ..files import write_bytes_atomic
from ..metrics import BOOTSTRAP_RESAMPLES, SMALL_SUPPORT, arm_metrics, compare
from ..pricing import CostMode, PriceTable, lifecycle_warnings, load_pricing
from ..tokens_check import TOLERANCE
from .confidence import METHOD as CALIBRATION_METHOD
from .confidence import add_calibration
from .decide import section as decide_section
from .load import Aligned, Arm, align, latency_studies, select_arms
from .verdict import verdict

MAX_VOLUME = 1e12
"""The largest --volume taken (a trillion images a month): beyond it the cost curve overflows."""

WORDNET_ID = re.compile(r"n\d{8}")
"""ImageNet's class ids (WordNet synsets), which Stanford Dogs' folders carry too."""

ARM_COLUMNS = (
    "prediction",
    "correct",
    "valid",
    "confidence",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "emulated",
    "scores",
)
"""results.csv columns written for each arm, as `<arm>.<column>` (`emulated` is 1 when the
built-in emulator answered: its numbers are settings, not a model's)."""


class ReportOptions(BaseModel):
    """What a report compares and how it prices it."""

    arms: list[str] | None = None
    """Arms to compare (default: every arm with predictions under DIR/arms)."""
    baseline: str | None = None
    """The arm the others are compared with (default: the first that is not fine-tuned)."""
    volume: float = Field(10_000, gt=0, le=MAX_VOLUME, allow_inf_nan=False)
    """Images a month, for the monthly cost comparison."""
    months: float = Field(12, ge=1, allow_inf_nan=False)
    """Months over which a fine-tuning job's cost is spread (at least one)."""
    serving: ServingMode = "realtime"
    """How every arm would be served, for its monthly cost: realtime or through the Batch API
    (a model that cannot be served in batch is priced realtime, with a note)."""
    out: Path | None = None
    """Output folder (default DIR/report)."""
    pricing: Path | None = None
    """A pricing file that extends or overrides the shipped table."""
    seed: int = Field(0, ge=0)
    """Seed of the paired bootstrap."""
    cpu_price_per_hour: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD an hour of CPU time, for local arms that ran on the CPU (overrides what classify
    recorded)."""
    gpu_price_per_hour: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD an hour of a GPU (cuda or mps), for local arms that ran on one."""
    review_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD for a person to check one image: the report names the confidence threshold that
    minimises the cost per correct label (arms that record a confidence)."""
    error_cost: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD a wrong label costs when it ships unreviewed: with `review_cost`, the threshold
    minimises the cost per image, errors included (refused without `review_cost`)."""


class ReportResult(BaseModel):
    out_dir: Path
    files: list[Path]
    verdict: list[str]


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def results_csv(al: Aligned) -> str:
    """results.csv: one row per test item: its label and image, `compared`, then each arm's
    columns (a prediction that is not a label is written as invalid)."""
    compared = set(al.ids)
    order = [i for i in al.manifest if i in al.arms[0].rows]
    fields = ["id", "label", "image_path", "compared"]
    fields += [f"{a.name}.{c}" for a in al.arms for c in ARM_COLUMNS]
    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(fields)
    for i in order:
        m = al.manifest[i]
        row: list[Any] = [i, m.label, m.image_path, int(i in compared)]
        for a in al.arms:
            r = a.rows[i]
            valid = a.valid(i)
            correct = valid and a.answered(i) and r["prediction"] == m.label
            row += [
                r.get("prediction", "") if valid else "",
                int(correct),
                int(valid),
                r.get("confidence", ""),
                r.get("latency_ms", ""),
                r.get("prompt_tokens", ""),
                r.get("completion_tokens", ""),
                int(a.emulated),
                r.get("scores", ""),
            ]
        w.writerow(row)
    return f.getvalue()


def _latency(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    x = np.asarray(values)
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
    }


def _arm_block(arm: Arm, al: Aligned) -> dict[str, Any]:
    ids = al.ids
    pred = [arm.predicted(i) for i in ids]
    scores = [arm.scores(i) for i in ids]
    m = arm_metrics(ids, al.truth, pred, al.labels, None if None in scores else scores)  # type: ignore[arg-type]
    tokens_in = sum(int(_num(arm.rows[i].get("prompt_tokens")) or 0) for i in ids)
    tokens_out = sum(int(_num(arm.rows[i].get("completion_tokens")) or 0) for i in ids)
    lat = [v for i in ids if (v := _num(arm.rows[i].get("latency_ms"))) is not None]
    ft = arm.meta.get("fine_tune") or {}
    return {
        "display": arm.display,
        "model": arm.model,
        "mode": arm.mode,
        "emulated": arm.emulated,
        "sample_verified": arm.sample is not None,
        "pretrained_on": ((arm.finetune or {}).get("details") or {}).get("pretrained_on"),
        "fine_tuned": arm.fine_tuned,
        "fine_tune": ft or None,
        "finetune_job": {k: v for k, v in (arm.finetune or {}).items() if k != "_dir"} or None,
        "settings": arm.meta.get("settings", {}),
        "errors": sum(1 for r in arm.rows.values() if (r.get("error") or "").strip()),
        **m,
        "tokens": {
            "prompt": tokens_in,
            "completion": tokens_out,
            "prompt_per_image": tokens_in / len(ids),
            "completion_per_image": tokens_out / len(ids),
        },
        # A request's latency: a Batch arm has none, and a local arm's per-image time is a share
        # of its batch's (its speed is `compute.images_per_s`, in the cost section).
        "latency_ms": _latency(lat) if arm.mode not in ("batch", "local") else None,
        "compute": arm.meta.get("compute"),
    }


def _usage(arm: Arm, block: dict[str, Any], opts: ReportOptions) -> ArmUsage:
    ft_meta = arm.meta.get("fine_tune") or {}
    job = arm.finetune or {}
    trained = job.get("trained_tokens")
    if trained is None:  # absent, or recorded as null before the job finished
        trained = ft_meta.get("trained_tokens")
    return ArmUsage(
        name=arm.name,
        model=arm.model,
        mode=arm.mode,
        fine_tuned=arm.fine_tuned,
        images=block["n"],
        prompt_tokens=block["tokens"]["prompt"],
        completion_tokens=block["tokens"]["completion"],
        accuracy=block["accuracy"],
        base_model=job.get("base_model") or ft_meta.get("base_model"),
        trained_tokens=int(trained) if trained is not None else None,
        compute=_compute(arm, job, opts),
    )


def _device_price(device: str | None, recorded: Any, opts: ReportOptions) -> float | None:
    """The hourly price of `device`: --cpu/--gpu-price-per-hour, else what was recorded."""
    kind = (device or "cpu").split(":")[0]
    override = opts.cpu_price_per_hour if kind == "cpu" else opts.gpu_price_per_hour
    if override is not None:
        return override
    return float(recorded) if isinstance(recorded, (int, float)) else None


def _compute(arm: Arm, job: dict[str, Any], opts: ReportOptions) -> ComputeUsage | None:
    """A local arm's compute record (arm.json `compute`, its job's finetune.json), else None."""
    c = arm.meta.get("compute")
    if not isinstance(c, dict):
        return None
    device = str(c.get("device") or "cpu")
    hardware = job.get("hardware") or {}
    return ComputeUsage(
        device=device.split(":")[0],
        images_per_s=c.get("images_per_s"),
        price_per_hour=_device_price(device, c.get("price_per_hour"), opts),
        training_s=job.get("compute_s", job.get("wall_s")),
        training_price_per_hour=(
            _device_price(hardware.get("device"), hardware.get("price_per_hour"), opts)
            if job
            else None
        ),
    )


def _cost_section(
    arms: list[Arm], blocks: dict[str, Any], comparisons: dict[str, Any], opts: ReportOptions
) -> dict[str, Any]:
    table = load_pricing(opts.pricing)
    for arm in arms:
        cost = arm_cost(_usage(arm, blocks[arm.name], opts), table, opts.serving)
        if not cost["error"]:
            cost["per_correct_at_volume"] = per_correct_at_volume(
                cost, blocks[arm.name]["accuracy"], opts.volume, opts.months
            )
            cost["estimate_vs_billed"] = _billed(arm, cost, table)
            if _deployment_sku(arm) == "developertier":
                cost["notes"].append(
                    "evaluated on a Developer-tier deployment (no hourly fee, removed after 24 "
                    "hours, no SLA): priced with the hourly fee a Standard or Global Standard "
                    "deployment pays to serve it"
                )
        blocks[arm.name]["cost"] = cost
    base = arms[0].name
    priced = [a.name for a in arms if not blocks[a.name]["cost"]["error"]]
    evens: dict[str, Any] = {}
    if base in priced:
        for name in comparisons:
            if name in priced:
                be = break_even(
                    blocks[name]["cost"], blocks[base]["cost"], opts.volume, opts.months
                )
                delta = comparisons[name]["delta_accuracy"]
                extra = be["extra_monthly_usd_at_volume"]
                be["usd_per_error_avoided"] = (
                    extra / (delta * opts.volume) if delta and delta > 0 and extra > 0 else None
                )
                evens[name] = be
    points = [be["volume_per_month"] for be in evens.values() if be["volume_per_month"]]
    grid = volume_grid(opts.volume, points)
    curves = {n: [monthly(blocks[n]["cost"], v, opts.months) for v in grid] for n in priced}
    return {
        "serving": opts.serving,
        "volume_per_month": opts.volume,
        "months": opts.months,
        "hours_per_month": HOURS_PER_MONTH,
        "break_even": evens,
        "curve": {"volumes": grid, "monthly_usd": curves},
    }


def _billed(arm: Arm, cost: dict[str, Any], table: PriceTable) -> dict[str, Any] | None:
    """A chat arm's tokens and dollars as estimated (arm.json `tokens_check`) against as billed
    (predictions.csv: every answered request with a usage), at the prices of the mode it ran in;
    None for an arm without a check (local, served, or recorded before classify kept one)."""
    check = arm.meta.get("tokens_check")
    if not isinstance(check, dict) or cost.get("price_mode") == "compute":
        return None
    entry = table.lookup(cost["price_entry"])  # an entry's key always matches it
    mode: CostMode = "realtime"
    if arm.fine_tuned:
        mode = "finetuned"
    elif arm.mode == "batch" and entry.batch_input_per_1m is not None:
        mode = "batch"
    billed = [
        (int(_num(r.get("prompt_tokens")) or 0), int(_num(r.get("completion_tokens")) or 0))
        for r in arm.rows.values()
        if not (r.get("error") or "").strip() and (_num(r.get("prompt_tokens")) or 0) > 0
    ]
    return billed_against_estimate(
        check,
        sum(p for p, _ in billed),
        sum(c for _, c in billed),
        len(billed),
        entry,
        mode,
        TOLERANCE,
    )


def _deployment_sku(arm: Arm) -> str | None:
    """The SKU `deploy` recorded for the Azure deployment this arm asked (finetune.json)."""
    skus = (arm.finetune or {}).get("deployment_skus") or {}
    provider, _, name = arm.model.partition("/")
    return skus.get(name) if provider == "azure" and isinstance(skus, dict) else None


def _lifecycle(arms: list[Arm], blocks: dict[str, Any], opts: ReportOptions) -> str:
    """Each arm's retirement warnings (`arms.<name>.lifecycle`), from its price entry's dates;
    returns how they were chosen (for `methods`)."""
    table = load_pricing(opts.pricing)
    today = price_table.current_date()  # looked up at call time: tests replace it
    for arm in arms:
        key = blocks[arm.name].get("cost", {}).get("price_entry")
        blocks[arm.name]["lifecycle"] = (
            lifecycle_warnings(
                key,
                "fine-tuned" if arm.fine_tuned else "zero-shot",
                pricing=table,
                today=today,
                months=opts.months,
                name=arm.model,
            )
            if key
            else []
        )
    return (
        "retirement dates (shutdown, end of fine-tuning, Azure deployment retirement) from the "
        f"price entry's lifecycle, each with its source; warned of when past or before "
        f"{opts.months:g} months (--months) from {today.isoformat()}, the day the report was built"
    )


def compute(prepared_dir: Path, opts: ReportOptions) -> tuple[dict[str, Any], Aligned]:
    """Everything metrics.json holds, from the arms on disk."""
    arms, baseline = select_arms(prepared_dir, opts.arms, opts.baseline)
    al = align(prepared_dir, arms)
    if not al.ids:
        raise UserError(
            "no test item was answered by every arm: rerun classify with --retry-failed, "
            "or leave the failing arm out with --arms"
        )
    blocks = {a.name: _arm_block(a, al) for a in arms}
    base_pred = [arms[0].predicted(i) for i in al.ids]
    comparisons = {
        a.name: compare(al.ids, al.truth, base_pred, [a.predicted(i) for i in al.ids], opts.seed)
        for a in arms[1:]
    }
    studies = latency_studies(prepared_dir, opts.arms)
    metrics: dict[str, Any] = {
        "generated_by": {"vlm_classify": __version__},
        "dataset": {
            "dir": str(prepared_dir),
            "labels": len(al.labels),
            "total_items": len(arms[0].rows),
            "compared_items": len(al.ids),
            "imagenet_ids": bool(al.manifest)
            and all(WORDNET_ID.fullmatch(r.synset) for r in al.manifest.values()),
            "excluded": al.excluded,
        },
        "baseline": baseline,
        "methods": {
            "accuracy_ci": "Wilson score interval, 95% (scipy.stats.binomtest.proportion_ci)",
            "delta_ci": "Tango's asymptotic score interval, 95% (Tango 1998; recommended by "
            "Fagerland, Lydersen and Laake 2014): the differences Δ its score test does not reject, "
            "found with scipy.optimize.brentq; leaves out 0 exactly when McNemar's asymptotic "
            "(uncorrected chi-square) test has p < 0.05; coverage simulated in docs/report.md",
            "delta_ci_bootstrap": f"paired bootstrap over items, {BOOTSTRAP_RESAMPLES} resamples, "
            f"percentile 95%, seed {opts.seed} (shown for reference: too narrow with few "
            "discordant items)",
            "mcnemar": "p_value: exact conditional test, two-sided binomial test of fixed out of "
            "fixed + broken at 1/2 (scipy); mid_p_value: its mid-p version, 2·[P(X <= m) − "
            "P(X = m)/2] with m = min(fixed, broken) (Fagerland, Lydersen and Laake 2013)",
            "chance": "a difference is called possibly chance when delta_ci includes 0 or "
            "McNemar's mid-p >= 0.05; when the two disagree the verdict says what each says",
            "serving": f"every arm priced as served {opts.serving} (--serving); a model that "
            "cannot be served that way is priced realtime, with a note",
            "per_correct": "cost per correct prediction: tokens only (per_correct), and at "
            "--volume with training amortised and hosting (per_correct_at_volume)",
            "estimate_vs_billed": "a chat arm's prompt and completion tokens as estimated (the "
            "rule estimate counts by, for the same requests: arm.json tokens_check) against as "
            "billed (the usage the service reported: predictions.csv), priced in the mode the "
            f"arm ran in; off when the prompt tokens differ by more than {TOLERANCE:.0%}",
            "far_beyond_volume": f"a break-even above {FAR_BEYOND:g}x --volume is called "
            "in practice never",
            "invalid": "answers that are not a label count as wrong and are reported apart",
            "small_support": f"per-class figures on fewer than {SMALL_SUPPORT} items are flagged",
            "calibration": CALIBRATION_METHOD,
        },
        "arms": blocks,
        "comparisons": comparisons,
        "latency_studies": {
            s.name: {"model": s.model, "emulated": s.emulated, "levels": s.levels} for s in studies
        },
    }
    metrics["cost"] = _cost_section(arms, blocks, comparisons, opts)
    metrics["methods"]["lifecycle"] = _lifecycle(arms, blocks, opts)
    add_calibration(
        arms, al, blocks, opts.review_cost, opts.volume, opts.months, opts.seed, opts.error_cost
    )
    metrics["decide"] = decide_section(prepared_dir, opts)
    metrics["verdict"] = verdict(metrics)
    return metrics, al


def build_report(prepared_dir: Path, opts: ReportOptions | None = None) -> ReportResult:
    """Compute, plot and render the report; return the files written."""
    from .render import render

    opts = opts or ReportOptions()
    prepared_dir = Path(prepared_dir)
    metrics, al = compute(prepared_dir, opts)
    out = Path(opts.out) if opts.out else prepared_dir / "report"
    # Everything is built in memory first: a failure leaves no half-written report behind.
    try:
        metrics_text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise UserError(
            f"the report has a number that is not finite ({e}): check --volume and --months"
        ) from None
    contents: dict[str, bytes] = {
        "results.csv": results_csv(al).encode("utf-8"),
        "metrics.json": metrics_text.encode("utf-8"),
    }
    contents |= render(prepared_dir, out, metrics, al)
    files = [out / rel for rel in contents]
    # Each file whole (temp file, then rename); the plots first, the pages that show them last.
    pages = ("results.csv", "metrics.json", "report.md", "report.html")
    for rel in sorted(contents, key=lambda r: (r in pages, pages.index(r) if r in pages else 0)):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, contents[rel])
    return ReportResult(out_dir=out, files=files, verdict=metrics["verdict"]["text"])
