"""Learning curves: nested seeded subsets, the power-law fit and its sentence checked against
independent computations, a curve of a tiny CLIP probe through the CLI (every point equal to a
recount of its arm's predictions.csv), and a cloud curve that costs money only with --yes."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from cli_support import run_cli
from vlm_classify.curve import fit_power_law, nested_subset, parse_shots, summary
from vlm_classify.dataset.manifest import ManifestRow
from vlm_classify.errors import UserError


def rows(per_class: int, classes: int = 3) -> list[ManifestRow]:
    out = []
    for c in range(classes):
        for i in range(per_class):
            out.append(
                ManifestRow(
                    id=f"c{c}/{i:03d}",
                    split="train",
                    label=f"L{c}",
                    synset="",
                    source_path="",
                    source_sha256="",
                    image_path="",
                    image_sha256="",
                    width=1,
                    height=1,
                    bytes=1,
                )
            )
    return out


def test_subsets_are_nested_balanced_and_seeded() -> None:
    train = rows(20)
    sizes = [1, 2, 5, 10, 20]
    subsets = [{r.id for r in nested_subset(train, k, seed=7)} for k in sizes]
    for small, large in itertools.pairwise(subsets):
        assert small < large  # each contains every smaller one
    for k, ids in zip(sizes, subsets, strict=True):
        assert len(ids) == 3 * k
        assert all(sum(i.startswith(f"c{c}/") for i in ids) == k for c in range(3))
    assert subsets[0] == {r.id for r in nested_subset(list(reversed(train)), 1, seed=7)}
    others = [{r.id for r in nested_subset(train, 5, seed=s)} for s in range(6)]
    assert len({frozenset(o) for o in others}) > 1  # the seed matters
    assert nested_subset(train, 99, seed=7) == train  # more than a class has: all of it


def test_the_fit_recovers_a_known_curve_and_its_95_percent_point() -> None:
    a, b, c = 0.9, 0.6, 0.7
    n = np.array([1, 2, 5, 10, 20, 40], float)
    fit = fit_power_law(n, a - b * n**-c)
    assert fit is not None
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-3)
    # the size by which 95% of the gain from 1 to 40 is made, by brute force on a fine grid
    grid = np.linspace(1, 40, 390_001)
    curve = a - b * grid**-c
    gain = curve[-1] - curve[0]
    brute = grid[np.argmax(curve - curve[0] >= 0.95 * gain)]
    assert fit.n_for_share(0.95, 1, 40) == pytest.approx(brute, abs=1e-3)
    # noisy points still give a rising curve near the truth
    rng = np.random.default_rng(0)
    noisy = fit_power_law(n, a - b * n**-c + rng.normal(0, 0.005, n.size))
    assert noisy is not None and abs(noisy.a - a) < 0.03 and noisy.rmse < 0.01
    assert fit_power_law([1, 2], [0.5, 0.6]) is None  # two sizes: no curve
    assert fit_power_law([1, 2, 4], [0.9, 0.8, 0.7]) is None  # no gain to describe


def test_the_sentence_quotes_measured_gain_and_fitted_share() -> None:
    a, b, c = 0.85, 0.5, 0.8
    points = [{"shots": k, "accuracy": a - b * k**-c} for k in (1, 5, 20, 40)]
    fit = fit_power_law([p["shots"] for p in points], [p["accuracy"] for p in points])
    text = summary(points, fit)
    gain = 100 * (points[-1]["accuracy"] - points[-2]["accuracy"])
    assert text.startswith(f"{gain:+.1f} pp from 20 to 40 a class; 95% of the gain by ")
    assert fit is not None and f"by {fit.n_for_share(0.95, 1, 40):.0f} a class" in text


def test_shots_parse_or_one_line() -> None:
    assert parse_shots("1, 2,all") == [1, 2, "all"]
    for bad in ("0", "1,x", ""):
        with pytest.raises(UserError, match="--shots"):
            parse_shots(bad)


torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")


def test_a_curve_of_a_tiny_probe_equals_its_arms_recounted(tmp_path: Path, capsys) -> None:
    from local_support import colour_prepared, write_open_clip_dir

    prepared = colour_prepared(tmp_path / "p", {"train": 8, "val": 2, "test": 6}, noise=300)
    model = write_open_clip_dir(tmp_path / "clip")
    args = ["curve", str(prepared), "--model", f"clip/{model}", "--name", "probe"]
    args += ["--shots", "1,2,4,all", "--device", "cpu"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    doc = json.loads((prepared / "curves" / "probe" / "curve.json").read_text())
    points = doc["points"]
    assert [p["shots"] for p in points] == [1, 2, 4, 8]
    for p in points:
        with (prepared / "arms" / p["arm"] / "predictions.csv").open(newline="") as f:
            recs = list(csv.DictReader(f))
        assert p["n"] == len(recs) == 18
        assert p["correct"] == sum(r["correct"] == "1" for r in recs)
        job = json.loads((prepared / "arms" / p["job"] / "finetune.json").read_text())
        assert job["trained_images"] == p["train_images"] == 3 * p["shots"]
        assert job["hyperparameters"]["shots"] == p["shots"]
        assert p["ci_low"] <= p["accuracy"] <= p["ci_high"]
    assert doc["summary"] in out and (prepared / "curves" / "probe" / "curve.png").is_file()
    with (prepared / "curves" / "probe" / "curve.csv").open(newline="") as f:
        assert [int(r["shots"]) for r in csv.DictReader(f)] == [1, 2, 4, 8]
    # again: every point is done already (its job and its arm), nothing retrained
    stamp = (prepared / "arms" / "probe.k1.job" / "finetune.json").stat().st_mtime_ns
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    arm = json.loads((prepared / "arms" / "probe.k1" / "arm.json").read_text())
    assert arm["last_run"]["skipped_already_done"] == 18
    assert (prepared / "arms" / "probe.k1.job" / "finetune.json").stat().st_mtime_ns == stamp


def test_a_cloud_curve_prints_its_cost_and_runs_only_with_yes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from local_support import colour_prepared
    from vlm_classify.emulator import Emulator, EmulatorConfig

    prepared = colour_prepared(tmp_path / "p", {"train": 8, "val": 2, "test": 3})
    config = EmulatorConfig(manifests=[prepared], ft_seconds=0.2, latency_scale=0.0)
    with Emulator(config) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        args = ["curve", str(prepared), "--model", "openai/gpt-4o-2024-08-06", "--name", "c"]
        args += ["--shots", "4,all"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        assert "rerun with --yes" in out and "4 a class (12 images): about $" in err
        assert not (prepared / "arms").exists() and emu.stats.requests == 0  # nothing spent
        code, out, err = run_cli([*args, "--yes"], capsys)
        assert code == 0, err
    doc = json.loads((prepared / "curves" / "c" / "curve.json").read_text())
    assert [p["shots"] for p in doc["points"]] == [4, 8]
    jobs = [
        json.loads((prepared / "arms" / p["job"] / "finetune.json").read_text())
        for p in doc["points"]
    ]
    assert [j["shots"] for j in jobs] == [4, 8]
    # the service trained on the subsets: 12 examples then 24, as many tokens per example
    tokens = [j["trained_tokens"] for j in jobs]
    assert tokens[1] == pytest.approx(2 * tokens[0], rel=0.05)
    assert all(p["cost_usd"] > 0 for p in doc["points"])
    assert doc["points"][0]["cost_usd"] < doc["points"][1]["cost_usd"]
