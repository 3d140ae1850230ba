"""Metrics and paired tests against values worked out by hand, and the break-even arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, chi2, multinomial, norm

from vlm_classify.cost import ArmUsage, arm_cost, break_even, volume_grid
from vlm_classify.metrics import (
    INVALID,
    accuracy_interval,
    arm_metrics,
    compare,
    mcnemar_exact,
    paired_bootstrap,
    per_class,
    tango_score_interval,
    top_k,
)
from vlm_classify.pricing import load_pricing
from vlm_classify.report.plots import confusion_cells


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
    r = mcnemar_exact([False, False, True], [True, True, True])
    assert r["p_value"] == pytest.approx(0.5)
    # mid-p: the observed split counts half. 2-0: 2 * (1/4 - 1/8) = 0.25; 6-1: 2 * (1 + 7/2) / 2^7.
    assert r["mid_p_value"] == pytest.approx(0.25)
    base = [False] * 6 + [True] + [True] * 3
    arm = [True] * 6 + [False] + [True] * 3
    r = mcnemar_exact(base, arm)
    assert (r["fixed"], r["broken"]) == (6, 1)
    assert r["p_value"] == pytest.approx(0.125)
    assert r["mid_p_value"] == pytest.approx(9 / 128)
    none = mcnemar_exact([True], [True])  # no discordant pair
    assert none["p_value"] == 1.0 and none["mid_p_value"] == 1.0


def test_mid_p_is_the_exact_tail_with_half_the_observed_split() -> None:
    for fixed in range(0, 13):
        for broken in range(0, 13):
            d = fixed + broken
            r = mcnemar_exact([False] * fixed + [True] * broken, [True] * fixed + [False] * broken)
            if d == 0:
                continue
            m = min(fixed, broken)
            by_hand = min(1.0, 2 * (binom.cdf(m, d, 0.5) - 0.5 * binom.pmf(m, d, 0.5)))
            assert r["mid_p_value"] == pytest.approx(by_hand, abs=1e-12)
            # Below the exact p by exactly P(X = m) (both sides when the split is lopsided).
            if fixed != broken:
                assert r["p_value"] - r["mid_p_value"] == pytest.approx(binom.pmf(m, d, 0.5))
            else:
                assert r["mid_p_value"] == pytest.approx(1.0)


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
    # Never predicted: precision is undefined (None), not 0; F1 = 2TP / (2TP + FP + FN) = 0.
    assert rows["B"]["precision"] is None and rows["B"]["f1"] == 0.0
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


@pytest.mark.parametrize(
    ("fixed", "broken", "n", "confidence", "published"),
    [
        # Published Tango intervals, as pinned (3 decimals) in the ratesci package's tests:
        (9, 3, 32, 0.95, (-0.027, 0.390)),  # Tango (1998)
        (0, 1, 44, 0.90, (-0.096, 0.037)),  # Tango (1998): one discordant pair in 44
        (16, 8, 86, 0.95, (-0.020, 0.207)),  # Agresti and Min (2005)
        (1, 7, 21, 0.95, (-0.517, -0.026)),  # Fagerland, Lydersen and Laake (2014), Bentur data
    ],
)
def test_tango_interval_matches_published_examples(
    fixed: int, broken: int, n: int, confidence: float, published: tuple[float, float]
) -> None:
    lo, hi = tango_score_interval(fixed, broken, n, confidence)
    assert (round(lo, 3), round(hi, 3)) == published


def _tango_statistic(delta: float, fixed: int, broken: int, n: int) -> float:
    """Tango's score statistic written out from Fagerland et al. (2014), eqs. for p21-tilde."""
    w = -fixed - broken + (2 * n - fixed + broken) * delta
    p21 = (math.sqrt(w * w + 8 * n * broken * delta * (1 - delta)) - w) / (4 * n)
    return (fixed - broken - n * delta) / math.sqrt(n * (2 * p21 + delta * (1 - delta)))


def test_tango_interval_is_where_the_score_test_does_not_reject() -> None:
    z = norm.ppf(0.975)
    for fixed, broken, n in [(16, 3, 60), (5, 0, 60), (0, 5, 60), (7, 7, 100), (30, 12, 600)]:
        lo, hi = tango_score_interval(fixed, broken, n)
        est = (fixed - broken) / n
        assert lo < est < hi
        assert _tango_statistic(lo, fixed, broken, n) == pytest.approx(z, abs=1e-6)
        assert _tango_statistic(hi, fixed, broken, n) == pytest.approx(-z, abs=1e-6)
        assert _tango_statistic(lo - 1e-4, fixed, broken, n) > z  # rejected just outside
        assert _tango_statistic(hi + 1e-4, fixed, broken, n) < -z


def test_tango_interval_leaves_out_zero_exactly_when_mcnemars_score_test_rejects() -> None:
    # At delta = 0 Tango's statistic is McNemar's uncorrected one: (fixed - broken)^2 / d.
    for n in (40, 60):
        for fixed in range(0, 21):
            for broken in range(0, 21):
                lo, hi = tango_score_interval(fixed, broken, n)
                d = fixed + broken
                rejects = d > 0 and chi2.sf((fixed - broken) ** 2 / d, 1) < 0.05
                assert lo <= (fixed - broken) / n <= hi
                assert (lo > 0 or hi < 0) == rejects, (fixed, broken, n, lo, hi)


def test_tango_interval_edge_cases() -> None:
    z2 = norm.ppf(0.975) ** 2
    lo, hi = tango_score_interval(0, 0, 60)  # no discordant item: the score bound z^2 / (n + z^2)
    assert (lo, hi) == (pytest.approx(-z2 / (60 + z2)), pytest.approx(z2 / (60 + z2)))
    assert tango_score_interval(60, 0, 60)[1] == 1.0  # every item fixed
    assert tango_score_interval(0, 60, 60)[0] == -1.0  # every item broken
    assert 0 < tango_score_interval(60, 0, 60)[0] < 1
    assert all(math.isnan(x) for x in tango_score_interval(0, 0, 0))
    with pytest.raises(ValueError):
        tango_score_interval(40, 30, 60)


@pytest.mark.parametrize(
    ("n", "delta", "discordant"),
    [(60, 0.2, 0.3), (60, 0.2, 0.2), (100, 0.05, 0.15), (100, 0.0, 0.1), (100, 0.1, 0.1)],
)
def test_tango_interval_keeps_its_95_percent_promise(
    n: int, delta: float, discordant: float
) -> None:
    # Exact coverage: every (fixed, broken) table weighted by its multinomial probability. The
    # conditional exact interval used before covered (100, 0.1, 0.1) 53% of the time.
    tables = np.array([(b, c, n - b - c) for b in range(n + 1) for c in range(n + 1 - b)])
    probs = ((discordant + delta) / 2, (discordant - delta) / 2, 1 - discordant)
    weight = multinomial.pmf(tables, n, probs)
    covered = [
        lo <= delta <= hi for lo, hi in (tango_score_interval(b, c, n) for b, c, _ in tables)
    ]
    assert 0.935 <= weight[covered].sum() <= 0.97


def test_compare_quotes_tango_and_both_mcnemar_p_values() -> None:
    # The reviewer's case: 5 fixed, 0 broken of 60. The exact test is conservative (p = 2 / 2^5
    # = 0.0625); mid-p = 1 / 2^5 and the score test (chi-square 5) both reject at 5%.
    base = [False] * 5 + [True] * 30 + [False] * 25
    arm = [True] * 5 + [True] * 30 + [False] * 25
    c = compare([str(i) for i in range(60)], ["A"] * 60, _answers(base), _answers(arm))
    assert c["delta_ci_method"] == "tango-score"
    assert c["mcnemar"]["p_value"] == pytest.approx(0.0625)
    assert c["mcnemar"]["mid_p_value"] == pytest.approx(1 / 32)
    lo, hi = c["delta_ci"]
    assert 0 < lo < 5 / 60 < hi
    assert (lo, hi) == tango_score_interval(5, 0, 60)
    # The demo's 16 fixed and 3 broken of 60: the conditional exact interval said +6.6 to +29.5.
    lo, hi = tango_score_interval(16, 3, 60)
    assert (round(lo * 100, 1), round(hi * 100, 1)) == (8.2, 35.3)


def _answers(ok: list[bool]) -> list[str]:
    return ["A" if x else "B" for x in ok]


def test_top_k_ranks_every_label_not_only_the_classes_seen() -> None:
    labels = ["A", "B", "C", "D", "E", "F"]
    truth = ["A", "B", "C", "D"]
    # A ranks 2nd among the classes seen (A..D) but 4th among all labels: not in the top 3.
    scores = [
        {"E": 0.9, "F": 0.8, "D": 0.7, "A": 0.6, "B": 0.1, "C": 0.1},
        {"B": 0.9},
        {"C": 0.9},
        {"D": 0.9},
    ]
    assert top_k(truth, scores, labels) == {"top_3": 0.75, "top_5": 1.0}
    m = arm_metrics(["1", "2", "3", "4"], truth, ["D", "B", "C", "D"], labels, scores)
    assert m["top_k"] == {"top_3": 0.75, "top_5": 1.0}


def test_the_confusion_heatmap_has_an_invalid_column_when_needed() -> None:
    m = arm_metrics(
        ["1", "2", "3", "4"], ["A", "A", "B", "B"], ["A", INVALID, "B", "A"], ["A", "B"]
    )
    rows, columns, counts, shares, _ = confusion_cells(m["confusion"])
    assert rows == ["A", "B"] and columns == ["A", "B", INVALID]
    assert counts.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert shares.sum(axis=1).tolist() == [1.0, 1.0]
    clean = arm_metrics(["1", "2"], ["A", "B"], ["A", "A"], ["A", "B"])
    assert confusion_cells(clean["confusion"])[1] == ["A", "B"]


def test_break_even_flags_unknown_training_and_absurd_volumes() -> None:
    zero_shot = _cost(0.00078)
    unknown = _cost(0.00054, training=None)  # type: ignore[arg-type]
    be = break_even(unknown | {"hosting_per_hour": 0.1}, zero_shot, 10_000, 12)
    assert be["training_unknown"] is True
    assert not break_even(_cost(0.00054, 120), zero_shot, 10_000, 12)["training_unknown"]
    # $1,241 a month of hosting saved back at 0.00024 an image: ~5.2 million, 517x the volume.
    be = break_even(_cost(0.00054, hosting=1.7), zero_shot, 10_000, 12)
    assert be["kind"] == "above" and be["far_beyond_volume"] is True
    assert be["times_volume"] == pytest.approx(1.7 * 730 / 0.00024 / 10_000)
    assert not break_even(_cost(0.00054, 120), zero_shot, 10_000, 12)["far_beyond_volume"]


def test_the_cost_curve_range_follows_volume_and_reasonable_break_evens() -> None:
    grid = volume_grid(10_000, [1.86e9])  # far beyond: not stretched to it
    assert grid[0] == pytest.approx(100) and grid[-1] == pytest.approx(100_000)
    grid = volume_grid(10_000, [50_000])  # near: 3x past it, so its label fits
    assert grid[-1] == pytest.approx(150_000)


def _usage(**kw: object) -> ArmUsage:
    base = dict(
        name="a",
        model="openai/gpt-4o-2024-08-06",
        mode="batch",
        fine_tuned=False,
        images=10,
        prompt_tokens=6000,
        completion_tokens=60,
        accuracy=0.5,
    )
    return ArmUsage(**(base | kw))  # type: ignore[arg-type]


def test_every_arm_is_priced_in_the_chosen_serving_mode() -> None:
    table = load_pricing()
    zs = _usage()  # evaluated through the Batch API
    real, batch = arm_cost(zs, table), arm_cost(zs, table, "batch")
    assert real["serving_mode"] == "realtime" and real["evaluated_mode"] == "batch"
    assert real["per_image"] * 1000 == pytest.approx(real["per_1000_realtime"])
    assert batch["serving_mode"] == "batch"
    assert batch["per_image"] * 1000 == pytest.approx(batch["per_1000_batch"])
    # An Azure fine-tuned deployment cannot be served in batch: realtime, with a note.
    ft = _usage(
        model="azure/my-dogs",
        mode="realtime",
        fine_tuned=True,
        base_model="azure/gpt-4o-2024-08-06",
        trained_tokens=None,
    )
    got = arm_cost(ft, table, "batch")
    assert got["serving_mode"] == "realtime" and got["price_mode"] == "finetuned"
    assert any("Batch API does not take fine-tuned" in n for n in got["notes"])
    assert got["training_usd"] is None and not got["training_known"]
    assert any("training cost unknown" in n for n in got["notes"])
