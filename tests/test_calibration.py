"""Calibration and abstention: ECE, the reliability bins, the accuracy-coverage curve and the
review-cost optimum (with and without an error cost), each against an independent computation
(plain loops, scikit-learn's `calibration_curve`, simulated samples with a known gap or a known
optimal threshold); the report's numbers recomputed from results.csv; the section seen in a real
browser; an emulator arm's logprob confidences."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from browser import find_chromium, open_page
from cli_support import run_cli
from conftest import make_prepared_dir
from report_support import write_arm, wrong
from vlm_classify.calibration import (
    calibrated_threshold,
    calibration,
    coverage_curve,
    downsample,
    ece_if_calibrated,
    expected_calibration_error,
    reliability,
    review_optimum,
)
from vlm_classify.cli import main
from vlm_classify.errors import UserError
from vlm_classify.report import ReportOptions, compute
from vlm_classify.report.confidence import sentences

LABELS = ["Beagle", "Chihuahua", "Golden Retriever", "Pug"]
BINS = 15
COMPUTE = {"device": "cpu", "images_per_s": 0.5, "price_per_hour": 0.36}
"""A slow local model: 0.36 / 3600 / 0.5 = $0.0002 an image."""
REVIEW = 0.0001
"""A review cheaper than the model's cost per correct label, so that reviewing the least
confident answers pays (with a review dearer than that, reviewing nothing is cheapest)."""
REVIEW_E, ERROR = 0.05, 1.0
"""With an error cost: a review at 5 cents, a wrong label that ships at a dollar (calibrated
confidences would call for review below 0.95)."""


# --- independent computations (loops over items, no numpy binning) ----------------------------


EDGES = [float(e) for e in np.linspace(0, 1, BINS + 1)]


def _bin_of(c: float) -> int:
    """The bin (lo, hi] holding `c` (the first bin also holds 0), found by walking the edges."""
    if c == 0:
        return 0
    for k in range(BINS):
        if EDGES[k] < c <= EDGES[k + 1]:
            return k
    raise AssertionError(f"{c} is in no bin")


def _brute_bins(conf: list[float | None], ok: list[bool]) -> dict[int, tuple[int, float, int]]:
    """Per non-empty bin: items, sum of confidences, correct items."""
    out: dict[int, tuple[int, float, int]] = {}
    for c, y in zip(conf, ok, strict=True):
        if c is None:
            continue
        n, s, k = out.get(_bin_of(c), (0, 0.0, 0))
        out[_bin_of(c)] = (n + 1, s + c, k + int(y))
    return out


def _brute_ece(conf: list[float | None], ok: list[bool]) -> float:
    """n_b/N · |acc_b − conf_b| written as |Σ correct − Σ confidence| / N over each bin."""
    bins = _brute_bins(conf, ok)
    total = sum(n for n, _, _ in bins.values())
    return sum(abs(k - s) for _, s, k in bins.values()) / total


def _brute_curve(conf: list[float | None], ok: list[bool], t: float) -> tuple[int, int]:
    """Items accepted at threshold t (confidence >= t) and the correct among them."""
    accepted = [y for c, y in zip(conf, ok, strict=True) if c is not None and c >= t]
    return len(accepted), sum(accepted)


def _brute_review(
    conf: list[float | None], ok: list[bool], c_auto: float, r: float
) -> list[tuple[float, float, int]]:
    """(cost per correct label, threshold, correct labels) of every threshold, by loops."""
    n = len(conf)
    out = []
    for t in sorted({c for c in conf if c is not None}, reverse=True):
        auto_correct = reviewed = 0
        for c, y in zip(conf, ok, strict=True):
            if c is not None and c >= t:
                auto_correct += int(y)
            else:
                reviewed += 1
        labels = auto_correct + reviewed
        if labels:
            out.append(((n * c_auto + reviewed * r) / labels, t, labels))
    return out


def _brute_errors(
    conf: list[float | None], ok: list[bool], c_auto: float, r: float, e: float
) -> tuple[list[tuple[float, float, float]], float, float]:
    """By loops: (cost per image with errors at `e`, threshold, coverage) of every threshold,
    then the cost per image of reviewing nothing and of reviewing everything."""
    n = len(conf)
    out = []
    for t in sorted({c for c in conf if c is not None}, reverse=True):
        usd = n * c_auto
        accepted = 0
        for c, y in zip(conf, ok, strict=True):
            if c is not None and c >= t:
                accepted += 1
                usd += 0 if y else e
            else:
                usd += r
        out.append((usd / n, t, accepted / n))
    nothing = (n * c_auto + sum(e for y in ok if not y)) / n
    return out, nothing, r


def _sample(rng: random.Random, n: int, none_share: float = 0.1, grid: int = 0) -> tuple:
    """Confidences (some None, some on a coarse grid so they tie, some on bin edges)."""
    conf: list[float | None] = []
    ok: list[bool] = []
    for _ in range(n):
        if rng.random() < none_share:
            conf.append(None)
            ok.append(rng.random() < 0.2)
            continue
        c = rng.random()
        if grid:
            c = round(c * grid) / grid
        if rng.random() < 0.05:
            c = float(np.linspace(0, 1, BINS + 1)[rng.randrange(BINS + 1)])  # exactly an edge
        conf.append(c)
        ok.append(rng.random() < c)
    return conf, ok


# --- the statistics --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_bins_and_ece_match_a_loop_and_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    conf, ok = _sample(rng, 400, grid=20 if seed % 2 else 0)
    table = reliability(conf, ok)
    brute = _brute_bins(conf, ok)
    assert len(table) == BINS and sum(b["count"] for b in table) == sum(c is not None for c in conf)
    for k, b in enumerate(table):
        n, s, right = brute.get(k, (0, 0.0, 0))
        assert b["count"] == n
        assert b["lower"] == pytest.approx(k / BINS) and b["upper"] == pytest.approx((k + 1) / BINS)
        if n:
            assert b["mean_confidence"] == pytest.approx(s / n)
            assert b["accuracy"] == pytest.approx(right / n)
        else:
            assert b["mean_confidence"] is None and b["accuracy"] is None
    known = [(c, y) for c, y in zip(conf, ok, strict=True) if c is not None]
    prob_true, prob_pred = calibration_curve(
        [int(y) for _, y in known], [c for c, _ in known], n_bins=BINS, strategy="uniform"
    )
    full = [b for b in table if b["count"]]
    assert [b["accuracy"] for b in full] == pytest.approx(list(prob_true))
    assert [b["mean_confidence"] for b in full] == pytest.approx(list(prob_pred))
    assert expected_calibration_error(conf, ok) == pytest.approx(_brute_ece(conf, ok))


def test_ece_of_a_calibrated_sample_is_near_zero_and_of_an_overconfident_one_near_its_gap() -> None:
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.3, 1.0, 100_000)
    calibrated = rng.random(conf.size) < conf
    assert expected_calibration_error(conf.tolist(), calibrated.tolist()) < 0.01
    over = rng.random(conf.size) < conf - 0.15  # 15 pp less often right than it says
    assert expected_calibration_error(conf.tolist(), over.tolist()) == pytest.approx(0.15, abs=0.01)
    block = calibration(conf.tolist(), over.tolist())
    assert block is not None and block["overconfidence"] == pytest.approx(0.15, abs=0.01)
    under = rng.random(conf.size) < np.minimum(conf + 0.1, 1.0)
    ece = expected_calibration_error(conf.tolist(), under.tolist())
    gap = float(np.mean(np.minimum(conf + 0.1, 1.0) - conf))
    assert ece == pytest.approx(gap, abs=0.01)


def test_the_calibrated_reference_matches_a_simulation_written_apart() -> None:
    """`ece_if_calibrated` against draws made item by item with another generator."""
    rng = random.Random(11)
    conf: list[float | None] = [rng.uniform(0.4, 1.0) for _ in range(150)] + [None] * 5
    ref = ece_if_calibrated(conf)
    assert ref is not None and ref["draws"] == 200
    sims = []
    for _ in range(1000):
        ok = [c is not None and rng.random() < c for c in conf]
        sims.append(_brute_ece(conf, ok))
    sims.sort()
    mean = sum(sims) / len(sims)
    assert ref["mean"] == pytest.approx(mean, abs=0.006)
    assert ref["p95"] == pytest.approx(sims[int(0.95 * len(sims))], abs=0.015)
    assert 0.03 < ref["mean"] < 0.15  # about 9% at 100 items: ECE on few items is mostly noise
    big = ece_if_calibrated([rng.uniform(0.4, 1.0) for _ in range(20_000)])
    assert big is not None and big["mean"] < 0.015


@pytest.mark.parametrize("seed", range(5))
def test_coverage_curve_matches_brute_force_with_ties_and_missing_confidences(seed: int) -> None:
    rng = random.Random(100 + seed)
    conf, ok = _sample(rng, 300, grid=25)
    curve = coverage_curve(conf, ok)
    thresholds = sorted({c for c in conf if c is not None}, reverse=True)
    assert [p["threshold"] for p in curve] == thresholds  # one point per distinct confidence
    for p in curve:
        accepted, right = _brute_curve(conf, ok, p["threshold"])
        assert (p["accepted"], p["correct"]) == (accepted, right)
        assert p["coverage"] == pytest.approx(accepted / len(conf))
        assert p["accuracy"] == pytest.approx(right / accepted)
    assert curve[-1]["accepted"] == sum(c is not None for c in conf)  # None: never accepted


def test_equal_confidences_are_accepted_or_rejected_together() -> None:
    conf = [0.9, 0.7, 0.7, 0.7, 0.5, None]
    ok = [True, True, False, True, False, True]
    curve = coverage_curve(conf, ok)
    assert [(p["threshold"], p["accepted"], p["correct"]) for p in curve] == [
        (0.9, 1, 1),
        (0.7, 4, 3),
        (0.5, 5, 3),
    ]
    # reordering the items changes nothing
    order = [3, 5, 1, 0, 4, 2]
    again = coverage_curve([conf[i] for i in order], [ok[i] for i in order])
    assert again == curve


def test_downsampling_keeps_the_ends_and_order() -> None:
    points = [{"threshold": 1 - i / 1000, "accepted": i + 1} for i in range(1000)]
    kept = downsample(points, 101)
    assert len(kept) == 101 and kept[0] == points[0] and kept[-1] == points[-1]
    assert [p["accepted"] for p in kept] == sorted(p["accepted"] for p in kept)
    assert downsample(points[:50], 101) == points[:50]


def test_review_optimum_by_hand() -> None:
    """5 items; the model costs 0.01 an image, a review 0.02."""
    conf = [0.9, 0.8, 0.8, 0.6, None]
    ok = [True, True, False, False, False]
    r = review_optimum(conf, ok, 0.01, 0.02)
    assert r is not None
    # 0.9: 1 accepted (1 right), 4 reviewed: (0.05 + 0.08) / 5 = 0.026
    # 0.8: 3 accepted (2 right), 2 reviewed: (0.05 + 0.04) / 4 = 0.0225
    # 0.6: 4 accepted (2 right), 1 reviewed: (0.05 + 0.02) / 3 = 0.02333
    b = r["best"]
    assert b["threshold"] == 0.8 and b["usd_per_correct_label"] == pytest.approx(0.0225)
    assert (b["auto_accepted"], b["reviewed"], b["correct_labels"]) == (3, 2, 4)
    assert b["auto_share"] == pytest.approx(0.6) and b["auto_accuracy"] == pytest.approx(2 / 3)
    assert b["final_accuracy"] == pytest.approx(0.8) and b["total_usd"] == pytest.approx(0.09)
    assert r["review_nothing"]["usd_per_correct_label"] == pytest.approx(0.05 / 2)
    assert r["review_everything"]["usd_per_correct_label"] == pytest.approx(0.02)
    assert r["cheapest"] == "review everything"


@pytest.mark.parametrize("seed", range(8))
def test_review_optimum_matches_brute_force_over_every_threshold(seed: int) -> None:
    rng = random.Random(200 + seed)
    conf, ok = _sample(rng, 150, grid=10 if seed % 2 else 0)
    c_auto = [0.0, 0.001, 0.02][seed % 3]
    review = [0.0, 0.005, 0.05, 1.0][seed % 4]
    r = review_optimum(conf, ok, c_auto, review)
    assert r is not None
    options = _brute_review(conf, ok, c_auto, review)
    lowest = min(cost for cost, _, _ in options)
    b = r["best"]
    assert b["usd_per_correct_label"] == pytest.approx(lowest, rel=1e-9, abs=1e-15)
    # ties broken by more correct labels, then the higher threshold
    tied = [o for o in options if math.isclose(o[0], lowest, rel_tol=1e-12, abs_tol=1e-15)]
    most = max(labels for _, _, labels in tied)
    assert b["correct_labels"] == most
    assert b["threshold"] == max(t for _, t, labels in tied if labels == most)
    n, right = len(ok), sum(ok)
    nothing = r["review_nothing"]["usd_per_correct_label"]
    assert nothing == (pytest.approx(n * c_auto / right) if right else None)
    everything = r["review_everything"]["usd_per_correct_label"]
    candidates = {"threshold": lowest, "review everything": everything}
    if nothing is not None:
        candidates["review nothing"] = nothing
    assert candidates[r["cheapest"]] == pytest.approx(min(candidates.values()))
    # a ratio: no threshold costs strictly less per correct label than both extremes
    assert lowest >= min(v for k, v in candidates.items() if k != "threshold") * (1 - 1e-9)


def test_error_cost_optimum_by_hand_an_interior_threshold_wins() -> None:
    """6 items; the model costs 0.01 an image, a review 0.1, a wrong label that ships 1.0."""
    conf = [0.95, 0.9, 0.8, 0.6, 0.5, None]
    ok = [True, True, True, False, False, True]
    r = review_optimum(conf, ok, 0.01, 0.1, 1.0)
    assert r is not None and r["objective"] == "usd_per_image"
    # per image: 0.01 + share reviewed · 0.1 + wrong accepted / 6 · 1.0
    # 0.95: 5 reviewed, 0 wrong: 0.0933; 0.9: 4, 0: 0.0767; 0.8: 3, 0: 0.06
    # 0.6: 2 reviewed, 1 wrong: 0.21; 0.5: 1, 2: 0.36
    # review nothing: 2 wrong (no confidence: taken as it is): 0.3433; review everything: 0.1
    b = r["best"]
    assert b["threshold"] == 0.8 and b["usd_per_image"] == pytest.approx(0.06)
    assert (b["auto_accepted"], b["reviewed"], b["wrong_shipped"]) == (3, 3, 0)
    assert b["total_usd_with_errors"] == pytest.approx(0.36) and b["error_usd"] == 0
    assert b["usd_per_correct_label"] == pytest.approx(0.36 / 6)  # reviewed images are correct
    assert r["review_nothing"]["usd_per_image"] == pytest.approx(0.06 / 6 + 2 / 6)
    assert r["review_nothing"]["wrong_shipped"] == 2
    assert r["review_everything"]["usd_per_image"] == pytest.approx(0.1)
    assert r["cheapest"] == "threshold"  # below both extremes: what the ratio could never do
    assert r["calibrated_threshold"] == pytest.approx(0.9)
    assert r["error_usd_per_wrong_label"] == 1.0


def test_error_cost_ties_go_to_the_higher_coverage() -> None:
    # review and error both cost 1: reviewing the wrong 0.7 costs what shipping it costs
    r = review_optimum([0.9, 0.7], [True, False], 0.0, 1.0, 1.0)
    assert r is not None
    assert r["best"]["threshold"] == 0.7 and r["best"]["auto_share"] == 1.0
    assert r["review_nothing"]["usd_per_image"] == pytest.approx(r["best"]["usd_per_image"])
    assert r["cheapest"] == "review nothing"  # as cheap, and it answers every image
    assert r["calibrated_threshold"] == 0.0  # a review costs as much as an error: never review
    # free errors: never review; free reviews against costly errors: review everything
    assert review_optimum([0.9, 0.7], [True, False], 0.01, 0.5, 0.0)["cheapest"] == (
        "review nothing"
    )
    assert review_optimum([0.9, 0.7], [True, False], 0.01, 0.0, 1.0)["cheapest"] == (
        "review everything"
    )
    assert calibrated_threshold(0.0, 0.0) == 0.0 and calibrated_threshold(0.02, 0.1) == 0.8


@pytest.mark.parametrize("seed", range(8))
def test_error_cost_optimum_matches_brute_force_over_every_threshold(seed: int) -> None:
    rng = random.Random(300 + seed)
    conf, ok = _sample(rng, 150, grid=10 if seed % 2 else 0)
    c_auto = [0.0, 0.001, 0.02][seed % 3]
    review = [0.0, 0.005, 0.05, 0.3][seed % 4]
    error = [0.05, 1.0, 10.0][seed % 3]
    r = review_optimum(conf, ok, c_auto, review, error)
    assert r is not None
    points, nothing, everything = _brute_errors(conf, ok, c_auto, review, error)
    lowest = min(cost for cost, _, _ in points)
    b = r["best"]
    assert b["usd_per_image"] == pytest.approx(lowest, rel=1e-9, abs=1e-15)
    tied = [p for p in points if math.isclose(p[0], lowest, rel_tol=1e-12, abs_tol=1e-15)]
    assert b["threshold"] == min(t for _, t, _ in tied)  # ties: the higher coverage
    assert b["auto_share"] == pytest.approx(max(cov for _, _, cov in tied))
    assert r["review_nothing"]["usd_per_image"] == pytest.approx(nothing)
    assert r["review_everything"]["usd_per_image"] == pytest.approx(everything)
    by_name = {"review nothing": nothing, "threshold": lowest, "review everything": everything}
    cheapest = min(by_name.values())
    assert by_name[r["cheapest"]] == pytest.approx(cheapest, rel=1e-9, abs=1e-15)
    # the first of the tied in coverage order (review nothing, threshold, review everything)
    first = next(k for k, v in by_name.items() if math.isclose(v, cheapest, rel_tol=1e-9))
    assert r["cheapest"] == first
    # the cost per correct label is today's, at the chosen threshold
    reviewed = b["reviewed"]
    right = sum(
        1 for c, y in zip(conf, ok, strict=True) if c is not None and c >= b["threshold"] and y
    )
    assert b["usd_per_correct_label"] == pytest.approx(
        (len(ok) * c_auto + reviewed * review) / (right + reviewed)
    )


@pytest.mark.parametrize(
    ("review", "error", "overconfidence", "expected"),
    [
        (0.1, 1.0, 0.0, 0.9),  # calibrated: 1 − X/E
        (0.5, 2.0, 0.0, 0.75),
        (0.5, 2.0, 0.1, 0.85),  # right 10 pp less often than it says: the optimum moves up
    ],
)
def test_the_empirical_threshold_finds_the_cost_sensitive_rule_on_a_large_sample(
    review: float, error: float, overconfidence: float, expected: float
) -> None:
    """Review an item iff P(wrong)·E > X: with P(right | confidence c) = c − gap, the cheapest
    threshold is 1 + gap − X/E. On 200,000 simulated items the optimum lands within 0.03."""
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.3, 1.0, 200_000)
    ok = rng.random(conf.size) < conf - overconfidence
    r = review_optimum(conf.tolist(), ok.tolist(), 0.001, review, error)
    assert r is not None and r["cheapest"] == "threshold"
    assert r["best"]["threshold"] == pytest.approx(expected, abs=0.03)
    assert r["calibrated_threshold"] == pytest.approx(1 - review / error)
    if overconfidence:  # the rule assumes calibration; the empirical optimum does not
        assert r["best"]["threshold"] - r["calibrated_threshold"] > 0.07


def test_no_confidence_means_no_block_and_bad_values_are_refused() -> None:
    assert calibration([None, None], [True, False]) is None
    assert review_optimum([None], [True], 0.01, 0.05) is None
    assert review_optimum([None], [True], 0.01, 0.05, 1.0) is None
    assert expected_calibration_error([None], [False]) is None
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        coverage_curve([1.5], [True])
    with pytest.raises(ValueError, match="review_cost"):
        review_optimum([0.5], [True], 0.0, -1.0)
    with pytest.raises(ValueError, match="error_cost"):
        review_optimum([0.5], [True], 0.0, 0.1, math.inf)


# --- the report --------------------------------------------------------------------------------


def _rewrite_confidence(arm_dir: Path, value: Any) -> None:
    """Set each row's confidence to `value(i, row)` ("" for none)."""
    path = arm_dir / "predictions.csv"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    for i, row in enumerate(rows):
        row["confidence"] = value(i, row)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def arms_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 test items: a chat arm (5 distinct confidences, 1 in 11 invalid), a local arm priced
    by compute time with nearly every confidence distinct (higher when right), the same answers
    unpriced, and an arm without logprobs."""
    root = make_prepared_dir(
        tmp_path_factory.mktemp("cal") / "p", LABELS, {"train": 1, "test": 30}, size=(24, 18)
    )

    def chat(i: int, label: str, labels: list[str]) -> str | None:
        return None if i % 11 == 0 else wrong(label, labels) if i % 4 == 0 else label

    write_arm(root, "zero-shot", chat, mode="batch")
    for name, extra in (("local", {"compute": COMPUTE}), ("unpriced", {})):
        local = write_arm(
            root,
            name,
            lambda i, label, labels: wrong(label, labels) if i % 3 == 0 else label,
            model="clip/ViT-B-32@laion2b_s34b_b79k",
            mode="local",
            extra=extra,
        )
        rng = random.Random(3)
        _rewrite_confidence(
            local,
            lambda i, row, rng=rng: (
                f"{rng.uniform(0.5, 1) if row['correct'] == '1' else rng.uniform(0.3, 0.8):.6f}"
            ),
        )
    bare = write_arm(root, "no-logprobs", lambda i, label, labels: label)
    _rewrite_confidence(bare, lambda i, row: "")
    return root


@pytest.fixture(scope="module")
def report(arms_dir: Path) -> Path:
    """`vlm-classify report --review-cost` on `arms_dir`, run once for the tests below."""
    out = arms_dir / "report"
    try:
        main(["report", str(arms_dir), "--review-cost", str(REVIEW), "--volume", "50000"])
    except SystemExit as e:
        assert not e.code, "report failed"
    return out


def _results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["compared"] == "1"]


def test_every_calibration_number_is_recomputed_from_results_csv(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    rows = _results(report)
    assert m["arms"]["no-logprobs"]["calibration"] is None
    for arm in ("zero-shot", "local", "unpriced"):
        c = m["arms"][arm]["calibration"]
        conf: list[float | None] = [
            float(r[f"{arm}.confidence"])
            if r[f"{arm}.valid"] == "1" and r[f"{arm}.confidence"]
            else None
            for r in rows
        ]
        ok = [r[f"{arm}.correct"] == "1" for r in rows]
        known = [x for x in conf if x is not None]
        assert c["n"] == len(rows) and c["with_confidence"] == len(known)
        assert c["invalid"] == sum(r[f"{arm}.valid"] == "0" for r in rows)
        assert c["ece"] == pytest.approx(_brute_ece(conf, ok))
        brute = _brute_bins(conf, ok)
        assert [b["count"] for b in c["bins"]] == [brute.get(k, (0,))[0] for k in range(BINS)]
        assert c["mean_confidence"] == pytest.approx(sum(known) / len(known))
        distinct = sorted(set(known), reverse=True)
        assert c["coverage_curve_points"] == len(distinct)
        assert len(c["coverage_curve"]) == min(101, len(distinct))
        assert c["coverage_curve"][0]["threshold"] == distinct[0]
        assert c["coverage_curve"][-1]["threshold"] == distinct[-1]
        for p in c["coverage_curve"]:
            accepted, right = _brute_curve(conf, ok, p["threshold"])
            assert (p["accepted"], p["correct"]) == (accepted, right)
            assert p["coverage"] == pytest.approx(accepted / len(rows))
        r = c["review"]
        cost = m["arms"][arm]["cost"]
        if cost["error"]:  # unpriced: the model counts as free, and the report says so
            c_auto = 0.0
            assert r["auto_cost_basis"].startswith("unpriced")
        else:
            c_auto = cost["per_correct_at_volume"] * m["arms"][arm]["accuracy"]
            # review nothing is the cost section's all-in cost per correct prediction
            assert r["review_nothing"]["usd_per_correct_label"] == pytest.approx(
                cost["per_correct_at_volume"]
            )
        assert r["auto_usd_per_image"] == pytest.approx(c_auto)
        lowest = min(o[0] for o in _brute_review(conf, ok, c_auto, REVIEW))
        assert r["best"]["usd_per_correct_label"] == pytest.approx(lowest)
    assert m["arms"]["local"]["cost"]["per_image"] == pytest.approx(0.0002)
    assert len(m["arms"]["zero-shot"]["calibration"]["coverage_curve"]) == 5  # 5 distinct values
    assert m["arms"]["local"]["calibration"]["coverage_curve_points"] > 101  # downsampled
    assert "calibration" in m["methods"]
    for name in ("reliability.png", "coverage.png"):
        assert (report / "plots" / name).stat().st_size > 1000


def test_the_sentence_quotes_metrics_json(report: Path, arms_dir: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    section = (report / "report.md").read_text().split("## Calibration and abstention", 1)[1]
    b = m["arms"]["local"]["calibration"]["review"]["best"]
    expected = (
        f"auto-accept {b['auto_share'] * 100:.0f}% of images at {b['auto_accuracy'] * 100:.1f}% "
        f"accuracy; {b['review_share'] * 100:.0f}% to review, "
        f"${b['usd_per_correct_label']:.4g} per correct label"
    )
    assert 0 < b["review_share"] < 1 and expected in section
    assert "local: ECE" in section and "unpriced is unpriced" in section
    assert "no threshold beats both extremes" in section and "--error-cost" in section
    assert "review below confidence" not in section
    assert "local is unpriced" not in section
    # the model is free when unpriced, so no review lowers its cost per correct label
    free = m["arms"]["unpriced"]["calibration"]["review"]
    assert free["best"]["reviewed"] == 0 and free["best"]["usd_per_correct_label"] == 0
    null = m["arms"]["zero-shot"]["calibration"]["ece_if_calibrated"]
    assert f"would show an ECE of {null['mean'] * 100:.1f}% on as many items" in section
    assert "no-logprobs: no confidence recorded" in section
    assert "never auto-accepted and go to review" in section  # zero-shot's invalid answers
    # without --review-cost: calibration only
    plain, _ = compute(arms_dir, ReportOptions())
    assert plain["arms"]["local"]["calibration"]["review"] is None
    assert plain["arms"]["local"]["calibration"]["ece"] == m["arms"]["local"]["calibration"]["ece"]


@pytest.fixture(scope="module")
def error_report(arms_dir: Path) -> Path:
    """`vlm-classify report --review-cost 0.05 --error-cost 1` on `arms_dir`, in another folder."""
    out = arms_dir / "report-errors"
    args = ["--review-cost", str(REVIEW_E), "--error-cost", str(ERROR), "--volume", "50000"]
    try:
        main(["report", str(arms_dir), *args, "--out", str(out)])
    except SystemExit as e:
        assert not e.code, "report failed"
    return out


def test_every_error_cost_number_is_recomputed_from_results_csv(error_report: Path) -> None:
    m = json.loads((error_report / "metrics.json").read_text())
    rows = _results(error_report)
    section = (error_report / "report.md").read_text().split("## Calibration and abstention")[1]
    for arm in ("zero-shot", "local", "unpriced"):
        conf: list[float | None] = [
            float(r[f"{arm}.confidence"])
            if r[f"{arm}.valid"] == "1" and r[f"{arm}.confidence"]
            else None
            for r in rows
        ]
        ok = [r[f"{arm}.correct"] == "1" for r in rows]
        r = m["arms"][arm]["calibration"]["review"]
        assert r["objective"] == "usd_per_image" and r["error_usd_per_wrong_label"] == ERROR
        assert r["review_usd_per_image"] == REVIEW_E
        assert r["calibrated_threshold"] == pytest.approx(1 - REVIEW_E / ERROR)
        c_auto = r["auto_usd_per_image"]
        if m["arms"][arm]["cost"]["error"]:
            assert c_auto == 0
        else:
            per_correct = m["arms"][arm]["cost"]["per_correct_at_volume"]
            assert c_auto == pytest.approx(per_correct * m["arms"][arm]["accuracy"])
        points, nothing, everything = _brute_errors(conf, ok, c_auto, REVIEW_E, ERROR)
        lowest = min(p[0] for p in points)
        b = r["best"]
        assert b["usd_per_image"] == pytest.approx(lowest)
        assert b["threshold"] == min(
            t for cost, t, _ in points if math.isclose(cost, lowest, rel_tol=1e-12)
        )
        assert r["review_nothing"]["usd_per_image"] == pytest.approx(nothing)
        assert r["review_everything"]["usd_per_image"] == pytest.approx(everything)
        by_name = {"review nothing": nothing, "threshold": lowest, "review everything": everything}
        assert by_name[r["cheapest"]] == pytest.approx(min(by_name.values()))
    # the local arm's wrong answers are its least confident: an interior threshold wins, and
    # the sentence quotes metrics.json
    r = m["arms"]["local"]["calibration"]["review"]
    b = r["best"]
    assert r["cheapest"] == "threshold" and 0 < b["review_share"] < 1
    expected = (
        f"review below confidence {b['threshold']:.4g}: auto-accept "
        f"{b['auto_share'] * 100:.0f}% of images at {b['auto_accuracy'] * 100:.1f}% accuracy, "
        f"{b['review_share'] * 100:.0f}% to review; ${b['usd_per_image']:.4g} an image with "
        f"errors at $1.00 each (review nothing: ${r['review_nothing']['usd_per_image']:.4g}; "
        f"review everything: $0.05), ${b['usd_per_correct_label']:.4g} per correct label"
    )
    assert expected in section
    assert "fitted on these test items: expect a little less on new ones" in section
    assert f"review below {1 - REVIEW_E / ERROR:.4g} (1 − review cost / error cost)" in section
    assert "$ an image, errors included" in section and "if calibrated" in section
    assert "no threshold beats both extremes" not in section


def test_an_error_cost_is_refused_when_negative_or_without_a_review_cost(
    arms_dir: Path, capsys
) -> None:
    code, _, err = run_cli(["report", str(arms_dir), "--error-cost", "-1"], capsys)
    assert code == 2 and "--error-cost" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["report", str(arms_dir), "--error-cost", "1"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "an error cost needs a review cost: give --review-cost" in err
    with pytest.raises(UserError, match="needs a review cost"):  # an experiment file, too
        compute(arms_dir, ReportOptions(error_cost=1.0))
    with pytest.raises(ValueError, match="error_cost"):
        ReportOptions(review_cost=0.1, error_cost=-1.0)


def test_the_section_in_a_real_browser(report: Path, arms_dir: Path, capsys) -> None:
    code, _, err = run_cli(["report", str(arms_dir), "--review-cost", "-1"], capsys)
    assert code == 2 and "--review-cost" in err
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set VLM_CLASSIFY_CHROMIUM)")
    page = open_page(report / "report.html", browser)
    assert page.console_errors == [] and page.requests == []
    assert "Calibration and abstention" in page.text and "auto-accept" in page.text
    shown = {img["alt"]: img for img in page.images}
    for alt in ("Reliability diagram", "Accuracy against coverage"):
        assert shown[alt]["loaded"] and shown[alt]["width"] > 300


def test_a_confidence_that_is_not_a_probability_is_refused_in_one_line(
    tmp_path: Path, capsys
) -> None:
    root = make_prepared_dir(tmp_path / "p", LABELS[:2], {"test": 3}, size=(24, 18))
    arm = write_arm(root, "a", lambda i, label, labels: label)
    _rewrite_confidence(arm, lambda i, row: "1.7" if i == 1 else "0.9")
    code, _, err = run_cli(["report", str(root)], capsys)
    assert code == 1 and "not a probability" in err and len(err.strip().splitlines()) == 1


def test_an_emulator_arm_records_logprob_confidences(tmp_path: Path, monkeypatch) -> None:
    from vlm_classify.classify import ClassifyOptions, classify
    from vlm_classify.emulator import Emulator, EmulatorConfig
    from vlm_classify.runner import RunnerConfig

    root = make_prepared_dir(tmp_path / "p", LABELS[:3], {"test": 8}, size=(24, 18))
    runner = RunnerConfig(concurrency=4, initial_backoff_s=0.001, max_backoff_s=0.01)
    with Emulator(EmulatorConfig(manifests=[root], accuracy=0.6)) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        classify(root, ClassifyOptions(model="openai/gpt-4o-2024-08-06", name="zs", runner=runner))
    m, _ = compute(root, ReportOptions(review_cost=0.01))
    c = m["arms"]["zs"]["calibration"]
    assert c is not None and c["with_confidence"] == c["n"] - c["invalid"] > 0
    assert all(0 < p["threshold"] <= 1 for p in c["coverage_curve"])
    assert c["review"]["auto_usd_per_image"] > 0  # priced from the tokens the emulator counted
    assert "these confidences are the emulator's" in " ".join(sentences(m))
