"""Calibration and abstention: pure functions over (confidence, correct) pairs, one per test item.

A confidence is the probability the arm gave the label it chose (from logprobs, or the top of a
local model's softmax). `None` stands for an item with no confidence: an answer that was not a
label, or a chat answer that came without logprobs. Such an item is left out of the expected
calibration error and is never accepted automatically: it goes to a person.

- ECE: equal-width bins on [0, 1] (15 by default, as Guo et al. 2017 did), bin k holding the
  confidences in (k/M, (k+1)/M] (the first bin also holds 0: scikit-learn's `calibration_curve`
  bins the same way), and ECE = Σ_k (n_k / N) · |accuracy_k − mean confidence_k|.
- What a perfectly calibrated arm with the same confidences would show (`ece_if_calibrated`):
  on a few hundred items ECE is mostly noise, and this says how much.
- The accuracy-coverage curve: answer only when the confidence is at least a threshold. The
  thresholds are the distinct confidences, highest first, so equal confidences are accepted or
  sent to review together (no tie is split by item order).
- The review optimum: every image is answered by the model (`auto_cost` each); those below the
  threshold are checked by a person (`review_cost` each) and end correctly labelled. Without an
  error cost the threshold minimises the cost per correct label, (N·auto_cost +
  N_review·review_cost) / (correct accepted + N_review): a ratio that no threshold lowers below
  both extremes (review nothing, review everything). With `error_cost` (what a wrong label that
  ships costs) it minimises the total cost per image, auto_cost + (N_review/N)·review_cost +
  (wrong accepted/N)·error_cost: review an item when P(wrong)·error_cost > review_cost, so with
  calibrated confidences the threshold is 1 − review_cost/error_cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

BINS = 15
"""Equal-width bins of the reliability diagram and the ECE (Guo et al. 2017 used 15)."""
MAX_CURVE_POINTS = 101
"""The accuracy-coverage curve is stored with at most this many points (the optimum is found on
the whole curve)."""
NULL_DRAWS = 200
"""Simulated perfectly calibrated arms for the ECE's reference (`ece_if_calibrated`)."""
COST_TIE = 1e-12
"""Relative difference under which two costs count as equal."""


def _pairs(
    confidence: Sequence[float | None], correct: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """The items that have a confidence: their confidences and whether each is correct."""
    if len(confidence) != len(correct):
        raise ValueError(f"{len(confidence)} confidences for {len(correct)} items")
    keep = [i for i, c in enumerate(confidence) if c is not None]
    conf = np.array([confidence[i] for i in keep], dtype=float)
    if conf.size and (not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite numbers in [0, 1]")
    return conf, np.array([bool(correct[i]) for i in keep], dtype=bool)


def reliability(
    confidence: Sequence[float | None], correct: Sequence[bool], bins: int = BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin: its bounds, the items in it, their mean confidence and accuracy
    (None for an empty bin). Items without a confidence are left out."""
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    conf, ok = _pairs(confidence, correct)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin k holds (edges[k], edges[k+1]]: side="left" counts the inner edges strictly below
    index = np.searchsorted(edges[1:-1], conf, side="left")
    out = []
    for k in range(bins):
        mask = index == k
        n = int(mask.sum())
        out.append(
            {
                "lower": float(edges[k]),
                "upper": float(edges[k + 1]),
                "count": n,
                "mean_confidence": float(conf[mask].mean()) if n else None,
                "accuracy": float(ok[mask].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(
    confidence: Sequence[float | None], correct: Sequence[bool], bins: int = BINS
) -> float | None:
    """Σ over bins of (share of items) · |accuracy − mean confidence|; None with no confidence."""
    table = reliability(confidence, correct, bins)
    total = sum(b["count"] for b in table)
    if not total:
        return None
    return float(
        sum(
            b["count"] / total * abs(b["accuracy"] - b["mean_confidence"])
            for b in table
            if b["count"]
        )
    )


def ece_if_calibrated(
    confidence: Sequence[float | None],
    bins: int = BINS,
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The ECE a perfectly calibrated arm with these confidences would show on this many items.

    ECE is biased upward on few items (each bin's accuracy is noisy and |·| keeps the noise):
    a calibrated arm shows about 9% on 100 items and 2% on 2,000. Each draw makes every item
    correct with probability equal to its confidence; the mean and 95th percentile of the
    draws' ECE tell whether an observed ECE is more than that noise.
    """
    conf, _ = _pairs(confidence, [False] * len(confidence))
    if not conf.size:
        return None
    edges = np.linspace(0.0, 1.0, bins + 1)
    onehot = np.zeros((conf.size, bins))
    onehot[np.arange(conf.size), np.searchsorted(edges[1:-1], conf, side="left")] = 1.0
    rng = np.random.default_rng(seed)
    expected = conf @ onehot
    ece = np.empty(draws)
    chunk = max(1, 2_000_000 // conf.size)  # draws at a time: bounded memory on large samples
    for start in range(0, draws, chunk):
        stop = min(draws, start + chunk)
        hits = (rng.random((stop - start, conf.size)) < conf).astype(float)
        # per draw: Σ_bins |Σ correct − Σ confidence| / N, the ECE written with sums
        ece[start:stop] = np.abs(hits @ onehot - expected).sum(axis=1) / conf.size
    return {
        "mean": float(ece.mean()),
        "p95": float(np.quantile(ece, 0.95)),
        "draws": draws,
        "seed": seed,
    }


def _curve_arrays(
    confidence: Sequence[float | None], correct: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct confidence, highest first: the threshold, the items accepted at it (those at
    least as confident) and the correct among them."""
    conf, ok = _pairs(confidence, correct)
    if not conf.size:
        return conf, np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    order = np.argsort(-conf, kind="stable")
    c_sorted, hits = conf[order], np.cumsum(ok[order])
    ends = np.flatnonzero(np.r_[c_sorted[1:] != c_sorted[:-1], True])  # last of each tie group
    return c_sorted[ends], ends + 1, hits[ends]


def coverage_curve(
    confidence: Sequence[float | None], correct: Sequence[bool]
) -> list[dict[str, Any]]:
    """Accept the items whose confidence is at least each distinct confidence, highest first.

    Per threshold: `accepted` items, `coverage` = accepted / all items (those without a
    confidence included: they are never accepted, so the curve ends at their complement),
    `correct` among the accepted and their `accuracy`.
    """
    n = len(confidence)
    thresholds, accepted, right = _curve_arrays(confidence, correct)
    return [
        {
            "threshold": float(t),
            "accepted": int(a),
            "coverage": int(a) / n,
            "correct": int(k),
            "accuracy": float(k / a),
        }
        for t, a, k in zip(thresholds, accepted, right, strict=True)
    ]


def downsample(
    points: Sequence[dict[str, Any]], most: int = MAX_CURVE_POINTS
) -> list[dict[str, Any]]:
    """At most `most` points of a curve, evenly spaced by rank, its first and last kept."""
    if len(points) <= most:
        return list(points)
    keep = np.unique(np.round(np.linspace(0, len(points) - 1, most)).astype(int))
    return [points[i] for i in keep]


def _per_correct(total: float, correct: int) -> float | None:
    return total / correct if correct else None


def _finite_cost(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _tied(cost: np.ndarray, lowest: float) -> np.ndarray:
    """Which costs equal the lowest within COST_TIE (relative; nan never)."""
    return np.abs(cost - lowest) <= COST_TIE * np.maximum(np.abs(cost), abs(lowest))


def calibrated_threshold(review_cost: float, error_cost: float) -> float:
    """The threshold calibrated confidences call for: review an item when P(wrong)·error_cost >
    review_cost, i.e. when its confidence is below 1 − review_cost/error_cost (0, review none by
    confidence, when a review costs as much as an error or more)."""
    _finite_cost("review_cost", review_cost)
    _finite_cost("error_cost", error_cost)
    if review_cost >= error_cost:
        return 0.0
    return 1.0 - review_cost / error_cost


def review_optimum(
    confidence: Sequence[float | None],
    correct: Sequence[bool],
    auto_cost: float,
    review_cost: float,
    error_cost: float | None = None,
) -> dict[str, Any] | None:
    """The confidence threshold that minimises the cost, and what it buys; None when no item has
    a confidence.

    All N images are answered by the model (`auto_cost` each); those under the threshold, and
    those without a confidence, are checked by a person (`review_cost` each) and end correct.
    Every point has `total_usd` = N·auto_cost + N_review·review_cost and `usd_per_correct_label`
    = total_usd / (correct accepted + N_review). The extremes: `review_nothing` (every answer
    taken as it is, invalid ones included) and `review_everything` (a person labels every image
    and the model is not run: review_cost an image); `cheapest` names the cheapest of `best`
    ("threshold") and the two.

    Without `error_cost`, `best` minimises the cost per correct label (ties: more correct
    labels, then the higher threshold); being a ratio, it never beats both extremes. With
    `error_cost` (USD a wrong label that ships costs), every point also has `wrong_shipped`,
    `error_usd`, `total_usd_with_errors` and `usd_per_image` = total_usd_with_errors / N, which
    `best` and `cheapest` minimise; ties go to the higher coverage (the lower threshold; for
    `cheapest`: review nothing, the threshold, review everything).
    """
    _finite_cost("auto_cost", auto_cost)
    _finite_cost("review_cost", review_cost)
    if error_cost is not None:
        _finite_cost("error_cost", error_cost)
    n = len(confidence)
    thresholds, accepted, right = _curve_arrays(confidence, correct)
    if not thresholds.size:
        return None
    reviewed = n - accepted
    labels = right + reviewed
    total = n * auto_cost + reviewed * review_cost
    with np.errstate(divide="ignore", invalid="ignore"):
        per_correct = np.where(labels > 0, total / np.maximum(labels, 1), np.nan)
    best_i: int | None = None
    if error_cost is None:
        if not np.isnan(per_correct).all():
            tied = _tied(per_correct, float(np.nanmin(per_correct)))
            most = labels[tied].max()
            best_i = int(np.flatnonzero(tied & (labels == most))[0])  # the highest threshold
    else:
        cost = (total + (accepted - right) * error_cost) / n
        best_i = int(np.flatnonzero(_tied(cost, float(cost.min())))[-1])  # the highest coverage
    best = None
    if best_i is not None:
        i = best_i
        best = {
            "threshold": float(thresholds[i]),
            "auto_accepted": int(accepted[i]),
            "auto_share": int(accepted[i]) / n,
            "auto_accuracy": float(right[i] / accepted[i]),
            "reviewed": int(reviewed[i]),
            "review_share": int(reviewed[i]) / n,
            "correct_labels": int(labels[i]),
            "final_accuracy": int(labels[i]) / n,
            "total_usd": float(total[i]),
            "usd_per_correct_label": None if np.isnan(per_correct[i]) else float(per_correct[i]),
        } | _with_errors(float(total[i]), int(accepted[i] - right[i]), n, error_cost)
    correct_all = sum(bool(c) for c in correct)
    nothing = {
        "correct_labels": correct_all,
        "final_accuracy": correct_all / n,
        "total_usd": n * auto_cost,
        "usd_per_correct_label": _per_correct(n * auto_cost, correct_all),
    } | _with_errors(n * auto_cost, n - correct_all, n, error_cost)
    everything = {
        "correct_labels": n,
        "final_accuracy": 1.0,
        "total_usd": n * review_cost,
        "usd_per_correct_label": review_cost,
    } | _with_errors(n * review_cost, 0, n, error_cost)
    if error_cost is None:
        options = [("threshold", best), ("review nothing", nothing)]
        key = "usd_per_correct_label"
    else:  # by coverage, highest first: ties go to the first
        options = [("review nothing", nothing), ("threshold", best)]
        key = "usd_per_image"
    options.append(("review everything", everything))
    cheapest: tuple[str, dict[str, Any]] | None = None
    for name, v in options:
        if v is None or v[key] is None:
            continue
        if cheapest is None or _cheaper(v, cheapest[1], key):
            cheapest = (name, v)
    out: dict[str, Any] = {
        "n": n,
        "objective": key,
        "auto_usd_per_image": auto_cost,
        "review_usd_per_image": review_cost,
        "error_usd_per_wrong_label": error_cost,
        "calibrated_threshold": (
            None if error_cost is None else calibrated_threshold(review_cost, error_cost)
        ),
        "best": best,
        "review_nothing": nothing,
        "review_everything": everything,
        "cheapest": cheapest[0] if cheapest else None,
    }
    return out


def _with_errors(total_usd: float, wrong: int, n: int, error_cost: float | None) -> dict[str, Any]:
    """The error-cost fields of one option (none without an error cost)."""
    if error_cost is None:
        return {}
    with_errors = total_usd + wrong * error_cost
    return {
        "wrong_shipped": wrong,
        "error_usd": wrong * error_cost,
        "total_usd_with_errors": with_errors,
        "usd_per_image": with_errors / n,
    }


def _cheaper(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """`a` costs less by `key`; per correct label, as much with more correct labels."""
    ca, cb = a[key], b[key]
    if not math.isclose(ca, cb, rel_tol=COST_TIE, abs_tol=0.0):
        return bool(ca < cb)
    return key == "usd_per_correct_label" and a["correct_labels"] > b["correct_labels"]


def calibration(
    confidence: Sequence[float | None],
    correct: Sequence[bool],
    bins: int = BINS,
    most: int = MAX_CURVE_POINTS,
    seed: int = 0,
) -> dict[str, Any] | None:
    """ECE (with what a calibrated arm would show), the reliability bins and the (downsampled)
    accuracy-coverage curve of one arm, with how many items had a confidence; None when none
    had."""
    conf, ok = _pairs(confidence, correct)
    if not conf.size:
        return None
    mean_conf, acc = float(conf.mean()), float(ok.mean())
    curve = coverage_curve(confidence, correct)
    return {
        "n": len(confidence),
        "with_confidence": int(conf.size),
        "without_confidence": len(confidence) - int(conf.size),
        "mean_confidence": mean_conf,
        "accuracy_with_confidence": acc,
        "overconfidence": mean_conf - acc,
        "ece": expected_calibration_error(confidence, correct, bins),
        "ece_if_calibrated": ece_if_calibrated(confidence, bins, seed=seed),
        "bins": reliability(confidence, correct, bins),
        "coverage_curve": downsample(curve, most),
        "coverage_curve_points": len(curve),
    }


__all__ = [
    "BINS",
    "MAX_CURVE_POINTS",
    "calibrated_threshold",
    "calibration",
    "coverage_curve",
    "downsample",
    "ece_if_calibrated",
    "expected_calibration_error",
    "reliability",
    "review_optimum",
]
