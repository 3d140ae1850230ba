"""Estimates checked against the bill: classify's warning, arm.json's `tokens_check`, the report's
estimated-against-billed figures and `estimate --calibrate ARM`, against the emulator billing a
factor more than the rules (`EmulatorConfig.bill_factor`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cli_support import run_cli
from vlm_classify import tokens_check
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import UserError
from vlm_classify.estimate import EstimateOptions, estimate
from vlm_classify.pricing import cost_usd, lookup
from vlm_classify.report import ReportOptions, build_report
from vlm_classify.runner import Progress, RunnerConfig

MODEL = "openai/gpt-4o-2024-08-06"
FAST = RunnerConfig(concurrency=2, initial_backoff_s=0.001, max_backoff_s=0.01)


def _emulator(prepared: Path, monkeypatch: pytest.MonkeyPatch, factor: float) -> Emulator:
    emu = Emulator(
        EmulatorConfig(
            manifests=[prepared], bill_factor=factor, batch_seconds=0.2, check_responses=True
        )
    )
    for k, v in emu.env().items():
        monkeypatch.setenv(k, v)
    return emu


def _rows(arm_dir: Path) -> list[dict[str, str]]:
    with (arm_dir / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _billed_rows(arm_dir: Path) -> list[dict[str, str]]:
    return [r for r in _rows(arm_dir) if not r["error"] and int(r["prompt_tokens"]) > 0]


def _classify(prepared: Path, name: str, mode: str, messages: list[str], **kw) -> Path:
    opts = ClassifyOptions(
        model=kw.pop("model", MODEL), name=name, mode=mode, runner=FAST, batch_poll_s=0.05, **kw
    )
    return classify(prepared, opts, on_status=messages.append).arm_dir


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_bill_20_percent_above_the_estimate_is_warned_once(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    messages: list[str] = []
    with _emulator(small_prepared, monkeypatch, 1.2) as emu:
        arm = _classify(small_prepared, "zs", mode, messages)
        assert emu.stats.schema_errors == []
    warned = [m for m in messages if "billed" in m]
    assert len(warned) == 1, messages
    # arm.json's check, recomputed: billed from predictions.csv, estimated by `estimate` itself
    # for the same requests (the whole test split: every item answered).
    check = json.loads((arm / "arm.json").read_text())["tokens_check"]
    rows = _billed_rows(arm)
    est = estimate(small_prepared, EstimateOptions(model=MODEL)).realtime
    assert check["items"] == len(rows) == est.requests == 6
    assert check["billed_prompt"] == sum(int(r["prompt_tokens"]) for r in rows)
    assert check["billed_completion"] == sum(int(r["completion_tokens"]) for r in rows)
    assert check["estimated_prompt"] == est.input_tokens
    assert check["estimated_completion"] == est.output_tokens
    assert check["ratio"] == pytest.approx(check["billed_prompt"] / check["estimated_prompt"])
    assert 1.19 < check["ratio"] < 1.22  # 20% more, each request rounded up
    line = warned[0]
    expected = (
        f"{MODEL}: billed {check['billed_prompt']:,} prompt tokens for the first 6 requests, "
        f"the estimate says {check['estimated_prompt']:,} "
        f"(+{(check['ratio'] - 1) * 100:.1f}%): estimates for this model are off; "
        "`estimate --calibrate zs` re-prices from what was billed"
    )
    assert line == expected and "\n" not in line


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_no_warning_when_the_bill_matches_the_estimate(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    messages: list[str] = []
    with _emulator(small_prepared, monkeypatch, 1.0):
        arm = _classify(small_prepared, "zs", mode, messages)
    assert not any("billed" in m for m in messages), messages
    check = json.loads((arm / "arm.json").read_text())["tokens_check"]
    assert check["billed_prompt"] == check["estimated_prompt"] and check["ratio"] == 1.0


def test_realtime_warns_after_the_first_answers_not_at_the_end(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_check, "FIRST", 2)
    done: list[int] = []
    when: list[int] = []

    def status(message: str) -> None:
        if "billed" in message:
            when.append(done[-1] if done else 0)

    def progress(p: Progress) -> None:
        done.append(p.done)

    one = RunnerConfig(concurrency=1, initial_backoff_s=0.001, max_backoff_s=0.01)
    with _emulator(small_prepared, monkeypatch, 1.5):
        classify(
            small_prepared,
            ClassifyOptions(model=MODEL, name="zs", runner=one),
            on_progress=progress,
            on_status=status,
        )
    assert len(when) == 1 and when[0] < 6  # said while items were still to be asked


def test_a_rerun_with_nothing_to_ask_does_not_warn_again(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _emulator(small_prepared, monkeypatch, 1.2):
        first: list[str] = []
        _classify(small_prepared, "zs", "realtime", first)
        again: list[str] = []
        arm = _classify(small_prepared, "zs", "realtime", again)
    assert any("billed" in m for m in first) and not any("billed" in m for m in again)
    assert json.loads((arm / "arm.json").read_text())["tokens_check"]["items"] == 6


def test_the_report_shows_estimated_against_billed_per_arm(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _emulator(small_prepared, monkeypatch, 1.2):
        zs = _classify(small_prepared, "zs", "batch", [])
        rt = _classify(small_prepared, "rt", "realtime", [])
    out = build_report(small_prepared, ReportOptions()).out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    entry = lookup(MODEL)
    for name, arm, mode in (("zs", zs, "batch"), ("rt", rt, "realtime")):
        b = metrics["arms"][name]["cost"]["estimate_vs_billed"]
        check = json.loads((arm / "arm.json").read_text())["tokens_check"]
        rows = _billed_rows(arm)
        billed_in = sum(int(r["prompt_tokens"]) for r in rows)
        billed_out = sum(int(r["completion_tokens"]) for r in rows)
        assert b["items"] == len(rows) and not b["stale"]
        assert b["price_mode"] == mode  # priced as the arm ran
        assert b["billed_prompt_tokens"] == billed_in
        assert b["billed_completion_tokens"] == billed_out
        assert b["estimated_prompt_tokens"] == check["estimated_prompt"]
        assert b["billed_usd"] == pytest.approx(cost_usd(billed_in, billed_out, entry, mode))
        assert b["estimated_usd"] == pytest.approx(
            cost_usd(check["estimated_prompt"], check["estimated_completion"], entry, mode)
        )
        assert b["prompt_ratio"] == pytest.approx(billed_in / check["estimated_prompt"])
        assert b["off"] is True
    page = (out / "report.md").read_text()
    assert "Estimated against billed, per arm" in page
    assert f"| {billed_in:,} |" in page and "(off)" in page
    assert "estimate_vs_billed" in metrics["methods"]


def test_estimate_calibrate_reprices_from_the_bill(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _emulator(small_prepared, monkeypatch, 1.2):
        arm = _classify(small_prepared, "zs", "realtime", [])
    check = json.loads((arm / "arm.json").read_text())["tokens_check"]
    plain = estimate(small_prepared, EstimateOptions(model=MODEL))
    calibrated = estimate(small_prepared, EstimateOptions(model=MODEL, calibrate="zs"))
    # The same requests as the arm: the calibrated plan is exactly what the arm was billed.
    assert calibrated.realtime.input_tokens == check["billed_prompt"]
    assert calibrated.realtime.output_tokens == check["billed_completion"]
    assert calibrated.batch is not None and calibrated.batch.input_tokens == check["billed_prompt"]
    assert calibrated.realtime.cost_usd > plain.realtime.cost_usd
    ratio = check["billed_prompt"] / check["estimated_prompt"]
    assert calibrated.finetuned is not None and plain.finetuned is not None
    assert calibrated.finetuned.input_tokens == round(plain.finetuned.input_tokens * ratio)
    assert calibrated.training == plain.training  # no training bill was compared
    assert any(a.startswith("calibrated from arm zs") for a in calibrated.assumptions)
    code, out, _ = run_cli(
        ["estimate", str(small_prepared), "--model", MODEL, "--calibrate", "zs", "--json"], capsys
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["realtime"]["input_tokens"] == check["billed_prompt"]
    assert doc["calibration"]["arm"] == "zs" and doc["calibration"]["emulated"] is True
    code, out, _ = run_cli(
        ["estimate", str(small_prepared), "--model", MODEL, "--calibrate", "zs"], capsys
    )
    assert code == 0 and "calibrated from arm zs" in out


def test_calibrate_refuses_another_model_or_an_arm_without_a_bill(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="classify that arm first"):
        estimate(small_prepared, EstimateOptions(model=MODEL, calibrate="nope"))
    with _emulator(small_prepared, monkeypatch, 1.2):
        _classify(small_prepared, "zs", "realtime", [])
    with pytest.raises(UserError, match=r"not a model priced as openai/gpt-4\.1"):
        estimate(small_prepared, EstimateOptions(model="openai/gpt-4.1", calibrate="zs"))
    arm_json = small_prepared / "arms" / "zs" / "arm.json"
    doc = json.loads(arm_json.read_text())
    del doc["tokens_check"]
    arm_json.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="no billed usage"):
        estimate(small_prepared, EstimateOptions(model=MODEL, calibrate="zs"))


def test_check_and_watch_are_plain_arithmetic() -> None:
    from vlm_classify.backends.base import Prediction, Usage
    from vlm_classify.dataset.manifest import ManifestRow

    def row(i: int) -> ManifestRow:
        return ManifestRow(
            id=f"x/{i}", split="test", label="A", synset="x", source_path="", source_sha256="",
            image_path="", image_sha256="", width=10, height=10, bytes=1,
        )  # fmt: skip

    def answer(prompt: int, error: str | None = None) -> Prediction:
        return Prediction("A", "A", True, usage=Usage(prompt, 2), error=error)

    said: list[str] = []
    watch = tokens_check.TokenWatch("m", "a", lambda _: 100, lambda _: 2, said.append, first=3)
    watch.see(row(0), answer(104))
    watch.see(row(1), answer(0, error="boom"))  # failed: nothing billed, not counted
    watch.see(row(2), answer(104))
    assert not watch.decided
    watch.see(row(3), answer(104))
    assert watch.result == tokens_check.TokenCheck(3, 300, 312, 6, 6)
    assert said == []  # 4% off: within the 5% tolerance
    watch.see(row(4), answer(1000))  # decided: later answers change nothing
    assert watch.result.items == 3
    loud = tokens_check.TokenWatch("m", "a", lambda _: 100, lambda _: 2, said.append)
    loud.decide([(row(0), answer(94))])
    assert said == [
        "m: billed 94 prompt tokens for the first request, the estimate says 100 (-6.0%): "
        "estimates for this model are off; `estimate --calibrate a` re-prices from what was billed"
    ]
