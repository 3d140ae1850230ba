"""Metrics and paired tests against values worked out by hand, and the break-even arithmetic."""

from __future__ import annotations

import math

import pytest

from vlm_classify.cost import break_even
from vlm_classify.metrics import (
    INVALID,
    accuracy_interval,
    arm_metrics,
    compare,
    mcnemar_exact,
    paired_bootstrap,
    per_class,
)


def test_wilson_interval_matches_the_formula() -> None:
    k, n, z = 442, 600, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = accuracy_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9)
    assert hi == pytest.approx(centre + half, abs=1e-9)


def test_exact_mcnemar_by_hand() -> None:
    # 2 fixed, 0 broken: p = 2 * (1/2)^2 = 0.5; 6 fixed, 1 broken: 2 * (1 + 7) / 2^7 = 0.125.
    assert mcnemar_exact([False, False, True], [True, True, True])["p_value"] == pytest.approx(0.5)
    base = [False] * 6 + [True] + [True] * 3
    arm = [True] * 6 + [False] + [True] * 3
    r = mcnemar_exact(base, arm)
    assert (r["fixed"], r["broken"]) == (6, 1)
    assert r["p_value"] == pytest.approx(0.125)
    assert mcnemar_exact([True], [True])["p_value"] == 1.0  # no discordant pair


def test_paired_bootstrap_is_seeded_and_brackets_the_difference() -> None:
    base = [i % 4 != 0 for i in range(200)]  # 75%
    arm = [i % 10 != 0 for i in range(200)]  # 90%
    a = paired_bootstrap(base, arm, seed=7)
    assert a == paired_bootstrap(base, arm, seed=7)
    assert a[0] < 0.15 < a[1] and a[0] > 0
    same = paired_bootstrap(base, base)
    assert same == (0.0, 0.0)  # identical arms: every resample differs by exactly 0


def test_per_class_names_stay_with_their_numbers() -> None:
    # The original study's report shifted class names when a class was never predicted; with
    # labels= passed explicitly, "B" (never predicted) keeps recall 0 and "C" keeps its own row.
    truth = ["A", "A", "B", "C", "C", "C"]
    pred = ["A", "A", "A", "C", "C", INVALID]
    rows = {r["label"]: r for r in per_class(truth, pred, ["A", "B", "C"])}
    assert rows["A"]["precision"] == pytest.approx(2 / 3) and rows["A"]["recall"] == 1.0
    assert rows["B"]["recall"] == 0.0 and rows["B"]["support"] == 1
    assert rows["C"]["precision"] == 1.0 and rows["C"]["recall"] == pytest.approx(2 / 3)
    assert rows["C"]["accuracy"] == pytest.approx(2 / 3) and rows["C"]["correct"] == 2


def test_arm_metrics_counts_invalid_answers_as_wrong_and_apart() -> None:
    ids = ["1", "2", "3", "4"]
    truth = ["A", "A", "B", "B"]
    pred = ["A", INVALID, "B", "A"]
    m = arm_metrics(ids, truth, pred, ["A", "B"])
    assert (m["n"], m["correct"], m["invalid"]) == (4, 2, 1)
    assert m["accuracy"] == 0.5 and m["invalid_rate"] == 0.25
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["confusion"] == {"labels": ["A", "B"], "matrix": [[1, 0], [1, 1]], "invalid": [1, 0]}
    assert m["top_confusions"][0]["ids"] in (["2"], ["4"])
    assert m["top_k"] is None


def test_compare_lists_fixed_and_broken_items_and_flags_small_classes() -> None:
    ids = ["a", "b", "c", "d"]
    truth = ["X", "X", "Y", "Y"]
    c = compare(ids, truth, ["X", "Y", "Y", "X"], ["X", "X", "X", "Y"])
    assert c["fixed_ids"] == ["b", "d"] and c["broken_ids"] == ["c"]
    assert c["delta_accuracy"] == pytest.approx(0.25)
    assert all(d["small_support"] for d in c["per_class"])
    assert {d["label"]: d["delta"] for d in c["per_class"]} == {"X": 0.5, "Y": 0.0}


def _cost(per_image: float, training: float = 0.0, hosting: float = 0.0) -> dict:
    return {"per_image": per_image, "training_usd": training, "hosting_per_hour": hosting}


def test_break_even_by_hand() -> None:
    zero_shot = _cost(0.00078)
    # Training $120 over 12 months = $10 a month; 0.00024 cheaper per image: 10 / 0.00024.
    be = break_even(_cost(0.00054, training=120), zero_shot, volume=10_000, months=12)
    assert be["kind"] == "above"
    assert be["volume_per_month"] == pytest.approx(10 / 0.00024)
    assert be["monthly_usd_at_volume"] == pytest.approx(10 + 5.4)
    assert be["extra_monthly_usd_at_volume"] == pytest.approx(10 + 5.4 - 7.8)
    # Hosting $1.70/h x 730 h and dearer tokens: never cheaper.
    be = break_even(_cost(0.001, training=155, hosting=1.7), zero_shot, 10_000, 12)
    assert be["kind"] == "never" and be["volume_per_month"] is None
    assert be["fixed_monthly_usd"] == pytest.approx(155 / 12 + 1.7 * 730)
    # No fixed cost and cheaper tokens (OpenAI, no hosting, training already paid): always.
    assert break_even(_cost(0.0005), zero_shot, 10_000, 12)["kind"] == "always"
    # Cheaper fixed but dearer per image: only below the crossing.
    be = break_even(_cost(0.001), _cost(0.0005, hosting=1.0), 10_000, 12)
    assert be["kind"] == "below" and be["volume_per_month"] == pytest.approx(730 / 0.0005)
