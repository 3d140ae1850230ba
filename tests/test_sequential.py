"""`classify --until-decided`: the anytime-valid confidence sequence keeps its error rate on
simulated arms with a known difference, however often it is checked, and a run against the
emulator stops early, records why, and resumes without asking again."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cli_support import run_cli
from vlm_classify.sequential import confidence_sequence, stopping_time
from vlm_classify.store import Store


def paired(n: int, p_base: float, delta: float, rng: np.random.Generator) -> np.ndarray:
    """Paired differences of two arms: base right with p_base, the other right with
    p_base + delta (independent given the item)."""
    base = rng.random(n) < p_base
    arm = rng.random(n) < p_base + delta
    return arm.astype(int) - base.astype(int)


@pytest.mark.parametrize(("p_base", "delta"), [(0.7, 0.0), (0.5, 0.1), (0.8, -0.05)])
def test_the_sequence_covers_the_truth_at_every_time_at_least_95_percent(
    p_base: float, delta: float
) -> None:
    rng = np.random.default_rng(1)
    runs, n, missed = 300, 400, 0
    for _ in range(runs):
        seq = confidence_sequence(paired(n, p_base, delta, rng).tolist(), alpha=0.05)
        missed += any(not (s.low <= delta <= s.high) for s in seq)
    # uniformly over all 400 looks, the misses stay under alpha (3 standard errors of slack)
    assert missed / runs <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / runs)


def test_with_no_difference_it_rarely_claims_one_and_with_a_big_one_it_stops_early() -> None:
    rng = np.random.default_rng(2)
    claims = sum(
        stopping_time(paired(300, 0.75, 0.0, rng).tolist(), 0.05, 0.0)[1] is not None
        for _ in range(300)
    )
    assert claims / 300 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)
    times = [stopping_time(paired(600, 0.5, 0.35, rng).tolist())[0] for _ in range(100)]
    assert np.mean(times) < 150  # far fewer than the 600 a fixed design would ask
    decisions = {stopping_time(paired(600, 0.5, 0.35, rng).tolist())[1] for _ in range(50)}
    assert decisions == {"better"}


def test_it_is_wider_than_a_fixed_n_interval_and_shrinks() -> None:
    rng = np.random.default_rng(3)
    d = paired(2000, 0.6, 0.1, rng)
    seq = confidence_sequence(d.tolist())
    for t in (50, 500, 2000):
        width = seq[t - 1].high - seq[t - 1].low
        se = np.std(d[:t], ddof=1) / np.sqrt(t)
        assert width > 2 * 1.96 * se  # the price of being valid at every look
    assert seq[1999].high - seq[1999].low < seq[99].high - seq[99].low < 1


def test_equivalence_within_a_margin() -> None:
    d = [0] * 3000  # two arms that always agree
    t, decision, interval = stopping_time(d, 0.05, margin=0.05)
    assert decision == "equivalent" and interval is not None and t < 3000
    assert interval.low > -0.05 and interval.high < 0.05


def test_until_decided_against_the_emulator(tmp_path: Path, capsys, monkeypatch) -> None:
    from vlm_classify.emulator import Emulator, EmulatorConfig

    source, prepared = tmp_path / "src", tmp_path / "p"
    assert run_cli(["sample", str(source), "--classes", "6", "--per-class", "40"], capsys)[0] == 0
    code, _, err = run_cli(
        ["prepare", str(source), "--out", str(prepared), "--split", "2,2,36"], capsys
    )
    assert code == 0, err
    config = EmulatorConfig(
        manifests=[prepared], latency_scale=0.0, accuracy=0.9, model_accuracy={"gpt-4o-mini": 0.3}
    )
    with Emulator(config) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        base = ["classify", str(prepared), "--name"]
        assert run_cli([*base, "mini", "--model", "openai/gpt-4o-mini"], capsys)[0] == 0
        args = [*base, "big", "--model", "openai/gpt-4o-2024-08-06", "--until-decided"]
        args += ["--against", "mini", "--concurrency", "4"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        asked = emu.stats.chat_requests
        code, _, err = run_cli(args, capsys)  # again: decided already, nothing asked
        assert code == 0 and emu.stats.chat_requests == asked
        other = [*base, "x", "--model", "openai/gpt-4o-2024-08-06", "--until-decided"]
        code, _, err = run_cli([*other, "--against", "mini", "--mode", "batch"], capsys)
        assert code == 1 and "drop --mode batch" in err
        code, _, err = run_cli([*other, "--against", "nobody"], capsys)
        assert code == 1 and "that arm has no answers" in err
        code, _, err = run_cli(
            [*base, "x", "--model", "openai/gpt-4o-2024-08-06", "--against", "mini"], capsys
        )
        assert code == 1 and "go together" in err
    rec = json.loads((prepared / "arms" / "big" / "arm.json").read_text())["until_decided"]
    assert rec["decision"] == "better" and rec["items"] == 216
    assert rec["needed"] <= rec["answered"] < 216 and rec["unasked"] == 216 - rec["answered"]
    assert rec["interval"][0] > 0
    assert f"decided after {rec['needed']} of 216 items: better than mini" in out
    # the record is a recomputation of the answered prefix, in the seeded order

    with Store.for_dir(prepared) as store:
        mine = {p.item_id: p.correct for p in store.predictions("big")}
        theirs = {p.item_id: p.correct for p in store.predictions("mini")}
    assert len(mine) == rec["answered"]
    order = sorted(theirs)
    random.Random(0).shuffle(order)
    diffs = [int(mine[i]) - int(theirs[i]) for i in order[: rec["answered"]]]
    t, decision, interval = stopping_time(diffs)
    assert (t, decision) == (rec["needed"], "better") and interval is not None
