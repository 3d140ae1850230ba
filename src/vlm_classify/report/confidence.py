"""The report's calibration and abstention section: each arm's `calibration` block of
metrics.json (from its recorded confidences), its sentences and its table."""

from __future__ import annotations

import math
from typing import Any

from ..calibration import BINS, calibration, review_optimum
from ..cost import monthly
from ..errors import DataError, UserError
from .load import Aligned, Arm
from .tables import Table
from .verdict import pct, pp, usd

METHOD = (
    f"expected calibration error over {BINS} equal-width confidence bins, (k/{BINS}, (k+1)/{BINS}]: "
    "the sum over bins of |accuracy − mean confidence| weighted by the bin's share of items; the "
    "accuracy-coverage curve accepts the items whose confidence is at least each distinct "
    "confidence (ties together). Items without a confidence (invalid answers, answers without "
    "logprobs) are left out of the ECE and never accepted automatically. With --review-cost: every "
    "image is answered by the model, those under the threshold are checked by a person and end "
    "correct; the threshold minimises (N·model cost + N_review·review cost) / (correct accepted + "
    "N_review), the model cost per image being the arm's monthly cost at --volume / --volume; with "
    "--error-cost too, it minimises the cost per image, model cost + (N_review/N)·review cost + "
    "(wrong accepted/N)·error cost, over every distinct confidence (ties to the higher coverage), "
    "and is compared with 1 − review cost/error cost, the threshold calibrated confidences call "
    "for. The threshold is fitted on the test items it is evaluated on: slightly optimistic"
)
ERROR_COST_NEEDS_REVIEW_COST = (
    "an error cost needs a review cost: give --review-cost (review_cost in the experiment file's "
    "[report]) with --error-cost (error_cost), the USD for a person to check one image"
)
"""Without a review cost the error cost has nothing to weigh against (a free review would always
win), so it is refused rather than read as 0."""


def confidences(arm: Arm, ids: list[str]) -> list[float | None]:
    """The recorded confidence of each item's valid answer; None for an invalid answer (it has
    no label to be confident in) or an empty cell. A value that is not a probability is refused."""
    out: list[float | None] = []
    for i in ids:
        raw = (arm.rows[i].get("confidence") or "").strip()
        if not raw or not arm.valid(i):
            out.append(None)
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # nan fails too
            raise DataError(
                f"arm {arm.name!r}: item {i!r} has confidence {raw!r}, not a probability in "
                f"[0, 1]: fix or rerun {arm.path / 'predictions.csv'}"
            )
        out.append(value)
    return out


def auto_cost(block: dict[str, Any], volume: float, months: float) -> tuple[float, str]:
    """The model's cost per image at --volume (training amortised and hosting included), and
    where it comes from; 0 for an arm the report could not price."""
    cost = block.get("cost") or {}
    if cost.get("error") or cost.get("per_image") is None:
        return 0.0, "unpriced: the model's cost is counted as 0"
    return monthly(cost, volume, months) / volume, "monthly cost at --volume / --volume"


def arm_calibration(
    arm: Arm,
    al: Aligned,
    block: dict[str, Any],
    review_cost: float | None,
    volume: float,
    months: float,
    seed: int = 0,
    error_cost: float | None = None,
) -> dict[str, Any] | None:
    """The arm's `calibration` block, None when no compared item has a confidence. `block` is
    the arm's metrics.json block, its cost already computed."""
    conf = confidences(arm, al.ids)
    correct = [arm.predicted(i) == t for i, t in zip(al.ids, al.truth, strict=True)]
    out = calibration(conf, correct, seed=seed)
    if out is None:
        return None
    out["invalid"] = sum(1 for i in al.ids if not arm.valid(i))
    out["review"] = None
    if review_cost is not None:
        c, basis = auto_cost(block, volume, months)
        review = review_optimum(conf, correct, c, review_cost, error_cost)
        if review is not None:
            out["review"] = review | {"auto_cost_basis": basis}
    return out


def add_calibration(
    arms: list[Arm],
    al: Aligned,
    blocks: dict[str, Any],
    review_cost: float | None,
    volume: float,
    months: float,
    seed: int = 0,
    error_cost: float | None = None,
) -> None:
    """Set `calibration` in every arm's block (after the cost section). An error cost without a
    review cost is refused (ERROR_COST_NEEDS_REVIEW_COST)."""
    if error_cost is not None and review_cost is None:
        raise UserError(ERROR_COST_NEEDS_REVIEW_COST)
    for arm in arms:
        blocks[arm.name]["calibration"] = arm_calibration(
            arm, al, blocks[arm.name], review_cost, volume, months, seed, error_cost
        )


def _share(x: float) -> str:
    """A share as a whole percent, with a decimal when rounding would say 0% or 100%."""
    whole = f"{x * 100:.0f}%"
    if whole in ("0%", "100%") and 0 < x < 1:
        return f"{x * 100:.1f}%"
    return whole


def review_sentence(r: dict[str, Any]) -> str:
    """ "auto-accept 82% of images at 97.1% accuracy; 18% to review, $0.0123 per correct label"."""
    b = r["best"]
    acc = pct(b["auto_accuracy"], 1)
    return (
        f"auto-accept {_share(b['auto_share'])} of images at {acc} accuracy; "
        f"{_share(b['review_share'])} to review, {usd(b['usd_per_correct_label'])} per correct "
        f"label"
    )


def error_cost_sentence(r: dict[str, Any]) -> str:
    """With --error-cost: the cheapest option per image (errors included), the two others, and
    the threshold calibrated confidences would call for."""
    b, e = r["best"], r["error_usd_per_wrong_label"]
    nothing, everything = r["review_nothing"], r["review_everything"]
    errors = f"an image with errors at {usd(e)} each"
    below = f"review below confidence {b['threshold']:.4g}"
    if r["cheapest"] == "threshold":
        s = (
            f"{below}: auto-accept {_share(b['auto_share'])} of images at "
            f"{pct(b['auto_accuracy'], 1)} accuracy, {_share(b['review_share'])} to review; "
            f"{usd(b['usd_per_image'])} {errors} (review nothing: {usd(nothing['usd_per_image'])}; "
            f"review everything: {usd(everything['usd_per_image'])}), "
            f"{usd(b['usd_per_correct_label'])} per correct label with the reviewed images "
            "counted correct. This threshold is fitted on these test items: expect a little less "
            "on new ones."
        )
    elif r["cheapest"] == "review nothing":
        s = (
            f"reviewing nothing is cheapest: {usd(nothing['usd_per_image'])} {errors}, at "
            f"{pct(nothing['final_accuracy'], 1)} accuracy (the best threshold, {below}: "
            f"{usd(b['usd_per_image'])}; review everything: {usd(everything['usd_per_image'])})."
        )
    else:
        s = (
            "reviewing everything (a person labels every image, no model) is cheapest: "
            f"{usd(everything['usd_per_image'])} an image (review nothing: "
            f"{usd(nothing['usd_per_image'])} {errors}; the best threshold, {below}: "
            f"{usd(b['usd_per_image'])})."
        )
    t = r["calibrated_threshold"]
    rule = (
        f" Calibrated confidences would call for review below {t:.4g} (1 − review cost / error "
        "cost)"
        if t > 0
        else " Calibrated confidences would call for no review (a review costs as much as an "
        "error or more)"
    )
    return f"{s}{rule}; this arm's optimum is {b['threshold']:.4g}."


def sentences(m: dict[str, Any]) -> list[str]:
    """One paragraph per arm: its calibration, and with --review-cost what abstaining buys."""
    out = []
    for a in m["arms"].values():
        c = a.get("calibration")
        name = a["display"]
        if c is None:
            out.append(
                f"{name}: no confidence recorded (no logprobs), so it has no calibration and "
                "cannot abstain: every answer is taken or every image reviewed."
            )
            continue
        gap = c["overconfidence"]
        lean = "over-confident" if gap > 0 else "under-confident" if gap < 0 else "calibrated"
        null = c["ece_if_calibrated"]
        beyond = c["ece"] > null["p95"]
        s = (
            f"{name}: ECE {pct(c['ece'], 1)} over {c['with_confidence']} of {c['n']} items with a "
            f"confidence; mean confidence {pct(c['mean_confidence'], 1)} against "
            f"{pct(c['accuracy_with_confidence'], 1)} accuracy ({lean} by "
            f"{pp(abs(gap)).lstrip('+')}). A perfectly calibrated arm with these confidences "
            f"would show an ECE of {pct(null['mean'], 1)} on as many items (95th percentile "
            f"{pct(null['p95'], 1)}): "
            + (
                "this arm's confidence is off by more than sample noise."
                if beyond
                else "the difference may be sample noise."
            )
        )
        if c["without_confidence"]:
            s += (
                f" {c['without_confidence']} items have no confidence ({c['invalid']} invalid "
                "answers among them): they are never auto-accepted and go to review."
            )
        if a["emulated"]:
            s += " Emulated: these confidences are the emulator's, not a model's."
        r = c.get("review")
        if r is not None and r.get("error_usd_per_wrong_label") is not None:
            s += (
                f" At {usd(r['review_usd_per_image'])} a review, "
                f"{usd(r['auto_usd_per_image'])} an image for the model and "
                f"{usd(r['error_usd_per_wrong_label'])} a wrong label that ships: "
                + error_cost_sentence(r)
            )
        elif r is not None and r["best"] is not None:
            b = r["best"]
            s += (
                f" At {usd(r['review_usd_per_image'])} a review and "
                f"{usd(r['auto_usd_per_image'])} an image for the model: "
                f"{review_sentence(r)} (confidence at least {b['threshold']:.4g})."
                f" Reviewing nothing: {usd(r['review_nothing']['usd_per_correct_label'])} per "
                f"correct label at {pct(r['review_nothing']['final_accuracy'], 1)} accuracy; "
                "reviewing everything (a person labels every image, no model): "
                f"{usd(r['review_everything']['usd_per_correct_label'])}."
            )
            if r["cheapest"] != "threshold":
                s += f" Cheapest per correct label: {r['cheapest']}."
            s += (
                " Per correct label no threshold beats both extremes; to choose one, give the "
                "cost of a wrong label that ships with --error-cost."
            )
        if r is not None and r["auto_cost_basis"].startswith("unpriced"):
            s += f" {name} is unpriced: its model cost is counted as 0."
        out.append(s)
    return out


def table(m: dict[str, Any]) -> Table | None:
    """ECE and, with --review-cost, the optimum per arm that recorded confidences (with
    --error-cost, the cost per image, errors included)."""
    rows = []
    reviews = [(a.get("calibration") or {}).get("review") for a in m["arms"].values()]
    review = any(reviews)
    errors = any(r.get("error_usd_per_wrong_label") is not None for r in reviews if r)
    for a in m["arms"].values():
        c = a.get("calibration")
        if c is None:
            continue
        row = [
            a["display"],
            f"{c['with_confidence']} / {c['n']}",
            pct(c["ece"], 1),
            pct(c["mean_confidence"], 1),
            pct(c["accuracy_with_confidence"], 1),
        ]
        if review:
            r = c.get("review")
            if r is None or r["best"] is None:
                row += ["-"] * (9 if errors else 6)
            elif errors:
                b = r["best"]
                row += [
                    f"{b['threshold']:.4g}",
                    f"{r['calibrated_threshold']:.4g}",
                    f"{_share(b['auto_share'])} at {pct(b['auto_accuracy'], 1)}",
                    _share(b["review_share"]),
                    usd(b["usd_per_image"]),
                    usd(b["usd_per_correct_label"]),
                    usd(r["review_nothing"]["usd_per_image"]),
                    usd(r["review_everything"]["usd_per_image"]),
                    r["cheapest"],
                ]
            else:
                b = r["best"]
                row += [
                    f"{b['threshold']:.4g}",
                    f"{_share(b['auto_share'])} at {pct(b['auto_accuracy'], 1)}",
                    _share(b["review_share"]),
                    usd(b["usd_per_correct_label"]),
                    usd(r["review_nothing"]["usd_per_correct_label"]),
                    usd(r["review_everything"]["usd_per_correct_label"]),
                ]
        rows.append(row)
    if not rows:
        return None
    header = ["arm", "with a confidence", "ECE", "mean confidence", "accuracy"]
    note = (
        f"ECE over {BINS} equal-width bins; accuracy of the items with a confidence. Threshold: "
        "answers with a confidence at least this are accepted, the rest (and answers without a "
        "confidence) go to a person, whose check makes them correct."
    )
    if errors:
        header += [
            "threshold",
            "if calibrated",
            "auto-accepted",
            "to review",
            "$ an image, errors included",
            "$ per correct label",
            "review nothing ($ an image)",
            "review everything ($ an image)",
            "cheapest",
        ]
        note += (
            " The threshold minimises the cost per image with errors at --error-cost each; "
            "'if calibrated' is 1 − review cost / error cost. It is fitted on these test items: "
            "expect a little less on new ones."
        )
    elif review:
        header += [
            "threshold",
            "auto-accepted",
            "to review",
            "$ per correct label",
            "review nothing",
            "review everything",
        ]
    return Table("Calibration and abstention", header, rows, note)
