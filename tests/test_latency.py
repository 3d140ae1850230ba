"""The latency study: the seed study's table reproduced exactly, and a measured run against the
emulator (levels, retries, failures counted apart, files on disk)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cli_support import run_cli
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.latency import (
    LEVEL_FIELDS,
    SAMPLE_FIELDS,
    LatencyOptions,
    latency_stats,
    measure_latency,
    summarize_csv,
)

DATA = Path(__file__).parent / "data"
SEED = DATA / "per_request_latencies.csv"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_seed_table_is_reproduced_byte_for_byte(tmp_path: Path, capsys) -> None:
    out = tmp_path / "summary.csv"
    code, _, err = run_cli(["latency", "--from-csv", str(SEED), "--out", str(out)], capsys)
    assert code == 0, err
    assert out.read_text() == (DATA / "latency_summary.csv").read_text()


def test_seed_table_as_json_has_the_same_fields_and_values(capsys) -> None:
    code, stdout, err = run_cli(["latency", "--from-csv", str(SEED), "--json"], capsys)
    assert code == 0, err
    rows = json.loads(stdout)
    expected = _csv(DATA / "latency_summary.csv")
    assert [list(r) for r in rows] == [list(e) for e in expected]
    for row, exp in zip(rows, expected, strict=True):
        for k, v in exp.items():
            got = row[k]
            assert (f"{got}" == v) if isinstance(got, str | int) else abs(got - float(v)) < 5e-3


def test_trimmed_table_drops_each_models_first_request() -> None:
    # The reference "trimmed" table keeps the maximum and drops 2008.99 ms: the first (warm-up)
    # request of each deployment, not the slowest.
    rows = {r["model"]: r for r in summarize_csv(SEED, trim_first=1)}
    for exp in _csv(DATA / "latency_summary_trimmed.csv"):
        got = rows[exp["model"]]
        for k, v in exp.items():
            if k != "model":
                assert float(got[k]) == pytest.approx(float(v), abs=5e-3), k


def test_stats_are_numpy_linear_population_and_count_errors_apart() -> None:
    x = [100.0, 200.0, 300.0, 400.0, 1000.0]
    s = latency_stats(x, errors=2)
    assert (s["total_requests"], s["success_count"], s["error_count"]) == (7, 5, 2)
    assert s["mean_ms"] == 400.0
    assert s["p90_ms"] == pytest.approx(float(np.percentile(x, 90)))  # 760: linear
    assert s["std_dev_ms"] == round(float(np.std(x)), 2)  # population (ddof=0)
    assert s["throughput_rps_est"] == 2.5
    assert latency_stats([], errors=3)["mean_ms"] is None


def test_from_csv_errors_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["latency", "--from-csv", str(tmp_path / "nope.csv")], capsys)
    assert code == 1 and "not found" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = run_cli(["latency", "--from-csv", str(bad)], capsys)
    assert code == 1 and "lacks column(s) model, latency_ms" in err
    code, _, err = run_cli(["latency"], capsys)
    assert code == 1 and "needs DIR, --model and --name" in err


@pytest.fixture
def latency_emu(small_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = EmulatorConfig(
        manifests=[small_prepared], latency_profile=SEED, latency_scale=0.002, seed=3
    )
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        yield e


def test_measured_levels_and_samples(small_prepared: Path, latency_emu: Emulator) -> None:
    opts = LatencyOptions(
        model="openai/gpt-4o-2024-08-06", name="zero-shot", requests=10, concurrency=[1, 4]
    )
    result = measure_latency(small_prepared, opts)
    assert result.emulated
    assert latency_emu.stats.chat_requests == 20
    levels = _csv(result.arm_dir / "latency.csv")
    samples = _csv(result.arm_dir / "latency-samples.csv")
    assert list(levels[0]) == LEVEL_FIELDS and list(samples[0]) == SAMPLE_FIELDS
    assert [r["concurrency"] for r in levels] == ["1", "4"]
    assert len(samples) == 20 and all(r["error"] == "" for r in samples)
    # Cycling through the 6 test images: 10 requests ask for the first four twice.
    for c in ("1", "4"):
        ids = [r["id"] for r in samples if r["concurrency"] == c]
        assert len(set(ids)) == 6 and ids[6:] == ids[:4]
    for level in levels:
        ms = [float(r["latency_ms"]) for r in samples if r["concurrency"] == level["concurrency"]]
        # The statistics are computed from the samples as written (0.01 ms): exactly reproducible.
        again = latency_stats(ms)
        for key in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "std_dev_ms"):
            assert float(level[key]) == again[key], key
        assert float(level["mean_ms"]) == round(float(np.mean(ms)), 2)
        assert float(level["p95_ms"]) == round(float(np.percentile(ms, 95)), 2)
        assert level["emulated"] == "1" and float(level["throughput_rps_measured"]) > 0
        # The replayed study latencies, scaled down: about 1.6 s x 0.002 = 3 ms, plus overhead.
        assert 1.5 < float(level["min_ms"]) < 1000
    meta = json.loads((result.arm_dir / "latency.json").read_text())
    assert meta["emulated"] is True and meta["options"]["concurrency"] == [1, 4]


def test_failures_are_retried_three_times_then_counted_apart(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = EmulatorConfig(manifests=[small_prepared], faults="500=0.7", seed=1)
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        opts = LatencyOptions(
            model="openai/gpt-4o-2024-08-06",
            name="flaky",
            requests=30,
            concurrency=[8],
            backoff_s=0.001,
        )
        result = measure_latency(small_prepared, opts)
    samples = _csv(result.arm_dir / "latency-samples.csv")
    failed = [r for r in samples if r["error"]]
    ok = [r for r in samples if not r["error"]]
    assert failed and ok, (
        "with 70% of the requests failing, some items fail three times (1 - 0.657^30 of runs)"
    )
    assert all(r["attempts"] == "3" and r["latency_ms"] == "" for r in failed)
    assert all(1 <= int(r["attempts"]) <= 3 and float(r["latency_ms"]) > 0 for r in ok)
    level = result.levels[0]
    assert (level["success_count"], level["error_count"]) == (len(ok), len(failed))
    assert level["total_requests"] == 30


def test_measure_cli_prints_the_levels(small_prepared: Path, latency_emu: Emulator, capsys) -> None:
    code, stdout, err = run_cli(
        [
            "latency",
            str(small_prepared),
            "--model",
            "openai/gpt-4o-2024-08-06",
            "--name",
            "lat",
            "--requests",
            "4",
            "--concurrency",
            "1,2",
        ],
        capsys,
    )
    assert code == 0, err
    assert "emulated" in stdout and "latency.csv" in stdout and "p95 ms" in stdout
    code, _, err = run_cli(
        [
            "latency",
            str(small_prepared),
            "--model",
            "openai/x",
            "--name",
            "l",
            "--concurrency",
            "0",
        ],
        capsys,
    )
    assert code == 1 and "--concurrency" in err and "Traceback" not in err


def test_latencies_are_rounded_before_the_statistics() -> None:
    """Each sample is rounded to 0.01 ms as it is recorded, so the summary is computed from
    exactly the numbers latency-samples.csv holds."""
    import asyncio
    from types import SimpleNamespace

    from vlm_classify.latency import _timed

    class Backend:
        async def classify(self, item: object) -> SimpleNamespace:
            return SimpleNamespace(latency_ms=1.00499)

    item = SimpleNamespace(id="a", label="Pug")
    opts = LatencyOptions(model="openai/x", name="n")
    sample = asyncio.run(_timed(Backend(), item, 1, opts))  # type: ignore[arg-type]
    assert sample.latency_ms == 1.0
