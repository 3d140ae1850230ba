"""What each arm costs to run, and the monthly volume at which one arm costs the same as another.

Prices come from `pricing.py` (data, never constants here). A fine-tuned arm pays its training
job once (amortised over `months`), hosting every hour its deployment exists (730 h a month) and
its own per-token price; a zero-shot arm pays per token only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserError
from .pricing import CostMode, PriceEntry, PriceTable, cost_usd, training_cost_usd

HOURS_PER_MONTH = 730.0


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


def _entry(usage: ArmUsage, table: PriceTable) -> PriceEntry:
    """The arm's price entry; a fine-tuned model without its own falls back to its base model's."""
    try:
        return table.lookup(usage.model)
    except UserError:
        if usage.fine_tuned and usage.base_model:
            return table.lookup(usage.base_model)
        raise


def arm_cost(usage: ArmUsage, table: PriceTable) -> dict[str, Any]:
    """Per-arm cost figures (USD). A missing price becomes `error`, not a failed report."""
    out: dict[str, Any] = {"error": None, "notes": []}
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

    if usage.fine_tuned:
        realtime, batch = per_1000("finetuned"), None
        serving = "finetuned"
        out["notes"].append("fine-tuned models are priced realtime (no Batch price in the table)")
        hosting = entry.hosting_per_hour
        training = None
        if usage.trained_tokens is not None:
            try:
                base = table.lookup(usage.base_model) if usage.base_model else entry
                training = training_cost_usd(usage.trained_tokens, base)
            except UserError as e:
                out["notes"].append(str(e))
        else:
            out["notes"].append("no finetune.json recorded for this arm: training cost unknown")
    else:
        realtime, batch = per_1000("realtime"), per_1000("batch")
        serving = "batch" if usage.mode == "batch" and batch is not None else "realtime"
        hosting, training = 0.0, 0.0
    per_image = ((batch if serving == "batch" else realtime) or 0.0) / 1000
    out |= {
        "serving_mode": serving,
        "per_1000_realtime": realtime,
        "per_1000_batch": batch,
        "per_image": per_image,
        "training_usd": training,
        "trained_tokens": usage.trained_tokens,
        "hosting_per_hour": hosting,
        "per_correct": per_image / usage.accuracy if usage.accuracy else None,
        "run_usd": per_image * usage.images,
    }
    if realtime is None:
        out["error"] = f"{entry.key} has no {serving} price: add it with --pricing FILE"
    return out


def monthly(cost: dict[str, Any], volume: float, months: float) -> float:
    """Monthly USD at `volume` images: amortised training + hosting + inference."""
    return fixed_monthly(cost, months) + volume * cost["per_image"]


def fixed_monthly(cost: dict[str, Any], months: float) -> float:
    return (cost.get("training_usd") or 0.0) / months + cost["hosting_per_hour"] * HOURS_PER_MONTH


def break_even(
    arm: dict[str, Any], baseline: dict[str, Any], volume: float, months: float
) -> dict[str, Any]:
    """When `arm` costs the same a month as `baseline`.

    `kind`: `above` (arm cheaper above `volume_per_month`), `below` (cheaper below it), `never`
    (arm costs more at every volume), `always` (arm costs less or the same at every volume).
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
    return {
        "kind": kind,
        "volume_per_month": point,
        "fixed_monthly_usd": fa,
        "baseline_fixed_monthly_usd": fb,
        "per_image_usd": va,
        "baseline_per_image_usd": vb,
        "monthly_usd_at_volume": fa + volume * va,
        "baseline_monthly_usd_at_volume": fb + volume * vb,
        "extra_monthly_usd_at_volume": dfixed + volume * dvar,
    }


def volume_grid(volume: float, points: list[float], n: int = 61) -> list[float]:
    """Volumes for the cost curve: two decades either side of the volume and break-even points."""
    marks = [v for v in [volume, *points] if v and v > 0] or [1000.0]
    lo, hi = max(1.0, min(marks) / 100), max(marks) * 100
    return [float(v) for v in np.geomspace(lo, hi, n)]


__all__ = [
    "HOURS_PER_MONTH",
    "ArmUsage",
    "arm_cost",
    "break_even",
    "fixed_monthly",
    "monthly",
    "volume_grid",
]
