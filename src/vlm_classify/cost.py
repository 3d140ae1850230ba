"""What each arm costs to run, and the monthly volume at which one arm costs the same as another.

Prices come from `pricing.py` (data, never constants here). A fine-tuned arm pays its training
job once (amortised over `months`), hosting every hour its deployment exists (730 h a month) and
its own per-token price; a zero-shot arm pays per token only. Every arm is priced in the same
serving mode (realtime or batch), whatever mode it was evaluated in: how it was run for the test
says nothing about how it would be served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import UserError
from .pricing import CostMode, PriceEntry, PriceTable, cost_usd, training_cost_usd

HOURS_PER_MONTH = 730.0
FAR_BEYOND = 100.0
"""A break-even volume above this multiple of the monthly volume means "in practice never"."""

ServingMode = Literal["realtime", "batch"]
SERVING_MODES: tuple[ServingMode, ...] = ("realtime", "batch")


@dataclass
class ArmUsage:
    """What cost depends on, for one arm."""

    name: str
    model: str
    """`provider/model` as the arm ran it."""
    mode: str
    """How the arm ran: realtime or batch."""
    fine_tuned: bool
    images: int
    prompt_tokens: int
    completion_tokens: int
    accuracy: float | None
    base_model: str | None = None
    """For a fine-tuned arm: the model it was trained from (finetune.json `base_model`)."""
    trained_tokens: int | None = None
    """For a fine-tuned arm: tokens billed by the training job (finetune.json)."""
    compute: ComputeUsage | None = None
    """For an arm that ran here (a local model): priced by compute time, not tokens."""


@dataclass
class ComputeUsage:
    """A local arm's compute: how fast it classified, on what, at what hourly price."""

    device: str
    """`cpu`, `cuda`, `mps` (the device type the arm ran on)."""
    images_per_s: float | None
    price_per_hour: float | None
    """USD an hour of that device (`--cpu-price-per-hour` / `--gpu-price-per-hour`)."""
    training_s: float | None = None
    """Wall seconds of its training job (a local fine-tune), if any."""
    training_price_per_hour: float | None = None


def _entry(usage: ArmUsage, table: PriceTable) -> PriceEntry:
    """The arm's price entry; a fine-tuned model without its own falls back to its base model's."""
    try:
        return table.lookup(usage.model)
    except UserError:
        if usage.fine_tuned and usage.base_model:
            return table.lookup(usage.base_model)
        raise


def _batch_fallback(usage: ArmUsage, entry: PriceEntry) -> str:
    """Why an arm cannot be priced as served through the Batch API."""
    if usage.fine_tuned and usage.model.startswith("azure/"):
        return (
            "Azure's Batch API does not take fine-tuned deployments: priced realtime (with hosting)"
        )
    if usage.fine_tuned:
        return "the price table has no Batch price for fine-tuned models: priced realtime"
    return f"{entry.key} has no Batch price in the table: priced realtime"


def arm_cost(
    usage: ArmUsage, table: PriceTable, serving: ServingMode = "realtime"
) -> dict[str, Any]:
    """Per-arm cost figures (USD) when served in `serving` mode. A missing price becomes `error`,
    not a failed report; a fine-tune whose training cost is unknown gets `training_usd` None."""
    out: dict[str, Any] = {"error": None, "notes": []}
    if usage.compute is not None:
        return out | _compute_cost(usage, usage.compute, serving)
    try:
        entry = _entry(usage, table)
    except UserError as e:
        return out | {"error": str(e)}
    n = usage.images or 1
    pin, pout = usage.prompt_tokens / n, usage.completion_tokens / n
    out |= {
        "price_entry": entry.key,
        "price_source": entry.source,
        "price_date": entry.date,
        "prompt_tokens_per_image": pin,
        "completion_tokens_per_image": pout,
    }

    def per_1000(mode: CostMode) -> float | None:
        try:
            return cost_usd(usage.prompt_tokens, usage.completion_tokens, entry, mode) * 1000 / n
        except UserError:
            return None

    training: float | None
    if usage.fine_tuned:
        realtime, batch = per_1000("finetuned"), None
        price_mode: CostMode = "finetuned"
        serving_mode: ServingMode = "realtime"
        hosting = entry.hosting_per_hour
        training = None
        if usage.trained_tokens is not None:
            try:
                base = table.lookup(usage.base_model) if usage.base_model else entry
                training = training_cost_usd(usage.trained_tokens, base)
            except UserError as e:
                out["notes"].append(f"training cost unknown: {e}")
        else:
            out["notes"].append(
                "training cost unknown: no trained_tokens recorded for this arm (finetune.json "
                "or arm.json fine_tune); monthly cost and break-even leave training out"
            )
    else:
        realtime, batch = per_1000("realtime"), per_1000("batch")
        serving_mode = "batch" if serving == "batch" and batch is not None else "realtime"
        price_mode = serving_mode
        hosting, training = 0.0, 0.0
    if serving == "batch" and serving_mode != "batch":
        out["notes"].append(_batch_fallback(usage, entry))
    used = batch if price_mode == "batch" else realtime
    per_image = (used or 0.0) / 1000
    out |= {
        "serving_mode": serving_mode,
        "price_mode": price_mode,
        "evaluated_mode": usage.mode,
        "per_1000_realtime": realtime,
        "per_1000_batch": batch,
        "per_image": per_image,
        "training_usd": training,
        "training_known": training is not None,
        "trained_tokens": usage.trained_tokens,
        "hosting_per_hour": hosting,
        "per_correct": per_image / usage.accuracy if usage.accuracy else None,
        "run_usd": per_image * usage.images,
    }
    if used is None:
        out["error"] = f"{entry.key} has no {price_mode} price: add it with --pricing FILE"
    return out


def _compute_cost(usage: ArmUsage, c: ComputeUsage, serving: ServingMode) -> dict[str, Any]:
    """A local arm: its device's hourly price over its measured images per second, and its
    training job's wall time at the training device's price. No tokens, no hosting fee (the
    hourly price is the machine)."""
    out: dict[str, Any] = {
        "price_entry": None,
        "price_source": "compute time",
        "price_mode": "compute",
        "serving_mode": serving,
        "evaluated_mode": usage.mode,
        "device": c.device,
        "images_per_s": c.images_per_s,
        "price_per_hour": c.price_per_hour,
        "per_1000_realtime": None,
        "per_1000_batch": None,
        "hosting_per_hour": 0.0,
        "trained_tokens": None,
        "notes": [f"runs here on {c.device}: priced by compute time, the same in any serving mode"],
    }
    flag = "--cpu-price-per-hour" if c.device == "cpu" else "--gpu-price-per-hour"
    if c.price_per_hour is None:
        return out | {
            "error": f"no compute price for {usage.name} ({c.device}): pass {flag} to report "
            "(or to classify, which records it)"
        }
    if not c.images_per_s:
        return out | {"error": f"no measured images per second for {usage.name}: rerun classify"}
    per_image = c.price_per_hour / 3600 / c.images_per_s
    training: float | None = 0.0
    if usage.fine_tuned:
        if c.training_s is None or c.training_price_per_hour is None:
            training = None
            out["notes"].append(
                "training cost unknown: no training time or price recorded (finetune.json); "
                "monthly cost and break-even leave training out"
            )
        else:
            training = c.training_price_per_hour * c.training_s / 3600
    return out | {
        "error": None,
        "per_1000": per_image * 1000,
        "per_image": per_image,
        "training_usd": training,
        "training_known": training is not None,
        "per_correct": per_image / usage.accuracy if usage.accuracy else None,
        "run_usd": per_image * usage.images,
    }


def billed_against_estimate(
    check: Mapping[str, Any],
    billed_prompt: int,
    billed_completion: int,
    items: int,
    entry: PriceEntry,
    mode: CostMode,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """An arm's tokens and dollars as estimated against as billed.

    `check` is arm.json's `tokens_check` (the estimate of the answered requests, from
    `classify`); the billed figures are the usage the service reported for those requests
    (predictions.csv: answered rows with a usage), `items` of them. Both are priced at `entry`'s
    `mode` prices. `stale`: predictions.csv holds other requests than the check counted (an
    arm.json written by an older classify; rerun it)."""
    est_prompt = int(check.get("estimated_prompt") or 0)
    est_completion = int(check.get("estimated_completion") or 0)

    def usd(prompt: int, completion: int) -> float | None:
        try:
            return cost_usd(prompt, completion, entry, mode)
        except UserError:
            return None

    est_usd, billed_usd = usd(est_prompt, est_completion), usd(billed_prompt, billed_completion)
    ratio = billed_prompt / est_prompt if est_prompt else None
    return {
        "items": items,
        "checked_items": int(check.get("items") or 0),
        "stale": items != int(check.get("items") or 0),
        "price_entry": entry.key,
        "price_mode": mode,
        "estimated_prompt_tokens": est_prompt,
        "billed_prompt_tokens": billed_prompt,
        "prompt_ratio": ratio,
        "estimated_completion_tokens": est_completion,
        "billed_completion_tokens": billed_completion,
        "estimated_usd": est_usd,
        "billed_usd": billed_usd,
        "usd_ratio": billed_usd / est_usd if est_usd and billed_usd is not None else None,
        "off": ratio is not None and abs(ratio - 1) > tolerance,
    }


def monthly(cost: dict[str, Any], volume: float, months: float) -> float:
    """Monthly USD at `volume` images: amortised training + hosting + inference."""
    return fixed_monthly(cost, months) + volume * cost["per_image"]


def fixed_monthly(cost: dict[str, Any], months: float) -> float:
    """Amortised training plus hosting a month; an unknown training cost counts as 0 (the
    callers flag it: see `break_even`'s `training_unknown`)."""
    return (cost.get("training_usd") or 0.0) / months + cost["hosting_per_hour"] * HOURS_PER_MONTH


def per_correct_at_volume(
    cost: dict[str, Any], accuracy: float | None, volume: float, months: float
) -> float | None:
    """USD per correct prediction at `volume` images a month, fixed costs included."""
    if not accuracy or volume <= 0:
        return None
    return monthly(cost, volume, months) / (volume * accuracy)


def break_even(
    arm: dict[str, Any], baseline: dict[str, Any], volume: float, months: float
) -> dict[str, Any]:
    """When `arm` costs the same a month as `baseline`.

    `kind`: `above` (arm cheaper above `volume_per_month`), `below` (cheaper below it), `never`
    (arm costs more at every volume), `always` (arm costs less or the same at every volume).
    `training_unknown`: a fine-tune's training cost is unknown and was left out (so the arm
    costs more than shown); `times_volume`: the break-even as a multiple of `volume`, and
    `far_beyond_volume` when it is more than FAR_BEYOND times it (in practice never).
    """
    fa, fb = fixed_monthly(arm, months), fixed_monthly(baseline, months)
    va, vb = arm["per_image"], baseline["per_image"]
    dfixed, dvar = fa - fb, va - vb
    point = None
    if dfixed > 0 and dvar < 0:
        kind, point = "above", dfixed / -dvar
    elif dfixed < 0 and dvar > 0:
        kind, point = "below", -dfixed / dvar
    elif dfixed > 0 or dvar > 0:
        kind = "never"
    else:
        kind = "always"
    times = point / volume if point is not None and volume > 0 else None
    return {
        "kind": kind,
        "volume_per_month": point,
        "times_volume": times,
        "far_beyond_volume": times is not None and times > FAR_BEYOND,
        "training_unknown": arm.get("training_usd") is None or baseline.get("training_usd") is None,
        "fixed_monthly_usd": fa,
        "baseline_fixed_monthly_usd": fb,
        "per_image_usd": va,
        "baseline_per_image_usd": vb,
        "monthly_usd_at_volume": fa + volume * va,
        "baseline_monthly_usd_at_volume": fb + volume * vb,
        "extra_monthly_usd_at_volume": dfixed + volume * dvar,
    }


def volume_grid(volume: float, points: list[float], n: int = 61) -> list[float]:
    """Volumes for the cost curve: from two decades below the volume (or the lowest break-even)
    up to 10x the volume or 3x the highest break-even, leaving out break-evens more than
    FAR_BEYOND times the volume (they would squash the chart; the report states them)."""
    volume = volume if volume > 0 else 1000.0
    near = [p for p in points if p and 0 < p <= FAR_BEYOND * volume]
    lo = max(1.0, min([volume, *near]) / 100)
    hi = max([10 * volume, *(3 * p for p in near)])
    if hi <= lo:
        hi = lo * 10
    return [float(v) for v in np.geomspace(lo, hi, n)]


__all__ = [
    "FAR_BEYOND",
    "HOURS_PER_MONTH",
    "SERVING_MODES",
    "ArmUsage",
    "ComputeUsage",
    "ServingMode",
    "arm_cost",
    "billed_against_estimate",
    "break_even",
    "fixed_monthly",
    "monthly",
    "per_correct_at_volume",
    "volume_grid",
]
