"""`classify` end to end: the real openai SDK against the emulator, OpenAI and Azure styles."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import read_manifest
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import FatalError, UserError
from vlm_classify.runner import RunnerConfig

FAST = RunnerConfig(
    concurrency=4, max_attempts=8, initial_backoff_s=0.001, max_backoff_s=0.02, request_timeout_s=5
)
MODEL = "gpt-4o-2024-08-06"


@pytest.fixture
def emu(small_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    with Emulator(
        EmulatorConfig(manifests=[small_prepared], accuracy=0.5, check_responses=True)
    ) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        yield e
        assert e.stats.schema_errors == []


def _rows(arm_dir: Path) -> list[dict[str, str]]:
    with (arm_dir / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _opts(**kw) -> ClassifyOptions:
    kw.setdefault("model", f"openai/{MODEL}")
    kw.setdefault("name", "zero-shot")
    kw.setdefault("runner", FAST)
    return ClassifyOptions(**kw)


def test_realtime_records_every_test_item(small_prepared: Path, emu: Emulator) -> None:
    result = classify(small_prepared, _opts())
    rows = _rows(result.arm_dir)
    test_ids = {r.id for r in read_manifest(small_prepared) if r.split == "test"}
    assert {r["id"] for r in rows} == test_ids
    for r in rows:
        assert r["valid"] == "1"  # enum answers are always a label
        assert r["correct"] == str(int(r["prediction"] == r["label"]))
        assert float(r["latency_ms"]) > 0
        assert int(r["prompt_tokens"]) > 85  # the image at detail low, plus the prompt
        assert 0 < float(r["confidence"]) <= 1
    arm = json.loads((result.arm_dir / "arm.json").read_text())
    assert arm["emulated"] is True and result.emulated
    assert arm["model"] == f"openai/{MODEL}"
    assert arm["totals"]["items"] == len(test_ids)
    assert arm["totals"]["correct"] == sum(r["correct"] == "1" for r in rows)
    assert emu.api_key not in (result.arm_dir / "arm.json").read_text()


def test_rerun_requests_nothing_again(small_prepared: Path, emu: Emulator) -> None:
    classify(small_prepared, _opts(limit=3))
    before = emu.stats.chat_requests
    result = classify(small_prepared, _opts())
    assert emu.stats.chat_requests - before == 6 - 3
    assert result.summary["skipped_already_done"] == 3
    again = emu.stats.chat_requests
    classify(small_prepared, _opts())
    assert emu.stats.chat_requests == again


def test_text_answers_are_parsed_and_invalid_ones_kept(small_prepared: Path, monkeypatch) -> None:
    cfg = EmulatorConfig(manifests=[small_prepared], accuracy=1.0, invalid_rate=1.0)
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        result = classify(small_prepared, _opts(answer="text", split="train", logprobs=False))
    rows = _rows(result.arm_dir)
    assert len(rows) == 36
    invalid = [r for r in rows if r["valid"] == "0"]
    valid = [r for r in rows if r["valid"] == "1"]
    assert valid, "messy but parseable answers must be recovered"
    assert all(r["prediction"] == r["label"] for r in valid)  # accuracy 1.0: parsed right
    for r in invalid:  # kept, never counted as a label
        assert r["prediction"] == "" and r["correct"] == "0" and r["error"] == ""


def test_faults_end_with_a_valid_record_for_every_item(small_prepared: Path, monkeypatch) -> None:
    cfg = EmulatorConfig(
        manifests=[small_prepared],
        faults="429=0.2,500=0.1,timeout=0.05,drop=0.05",
        timeout_hold=2.0,
        retry_after_ms=5,
    )
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        runner = FAST.model_copy(update={"request_timeout_s": 0.5, "max_attempts": 12})
        result = classify(small_prepared, _opts(split="train", runner=runner))
        assert sum(e.stats.faults.values()) > 0
    rows = _rows(result.arm_dir)
    assert len(rows) == 36 and all(r["valid"] == "1" and r["error"] == "" for r in rows)
    assert any(int(r["attempts"]) > 1 for r in rows)


def test_azure_style(small_prepared: Path, emu: Emulator, monkeypatch) -> None:
    result = classify(small_prepared, _opts(model=f"azure/{MODEL}", name="azure-zs"))
    assert len(_rows(result.arm_dir)) == 6
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emu.azure_v1_base_url)
    monkeypatch.delenv("OPENAI_API_VERSION")
    result = classify(small_prepared, _opts(model=f"azure/{MODEL}", name="azure-v1"))
    assert len(_rows(result.arm_dir)) == 6


def test_wrong_key_stops_before_anything_is_recorded(
    small_prepared: Path, emu: Emulator, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    with pytest.raises(FatalError, match="OPENAI_API_KEY"):
        classify(small_prepared, _opts())
    assert not (small_prepared / "arms" / "zero-shot" / "predictions.csv").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OPENAI_API_KEY": None}, "OPENAI_API_KEY is not set"),
    ],
)
def test_missing_credentials_name_the_variable(
    small_prepared: Path, monkeypatch, env, message
) -> None:
    for k, v in env.items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=message):
        classify(small_prepared, _opts())


def test_missing_azure_settings_name_the_variable(small_prepared: Path, monkeypatch) -> None:
    for k in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="AZURE_OPENAI_ENDPOINT"):
        classify(small_prepared, _opts(model="azure/my-deployment"))
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.invalid")
    with pytest.raises(UserError, match="AZURE_OPENAI_API_KEY"):
        classify(small_prepared, _opts(model="azure/my-deployment"))
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    with pytest.raises(UserError, match="OPENAI_API_VERSION"):
        classify(small_prepared, _opts(model="azure/my-deployment"))


def test_changed_settings_for_an_existing_arm_are_refused(
    small_prepared: Path, emu: Emulator
) -> None:
    classify(small_prepared, _opts(limit=1))
    with pytest.raises(UserError, match="choose another --name"):
        classify(small_prepared, _opts(prompt="short"))


# --- batch mode ---------------------------------------------------------------------------


def _batch_emu(small_prepared: Path, monkeypatch, **kw) -> Emulator:
    kw.setdefault("batch_seconds", 0.2)
    e = Emulator(
        EmulatorConfig(manifests=[small_prepared], accuracy=0.5, check_responses=True, **kw)
    ).start()
    for k, v in e.env().items():
        monkeypatch.setenv(k, v)
    return e


def test_batch_mode_matches_realtime(small_prepared: Path, monkeypatch) -> None:
    e = _batch_emu(small_prepared, monkeypatch)
    try:
        batch = classify(small_prepared, _opts(name="zs-batch", mode="batch", batch_poll_s=0.05))
        realtime = classify(small_prepared, _opts(name="zs-rt"))
        assert e.stats.schema_errors == []
    finally:
        e.stop()
    b = {r["id"]: r for r in _rows(batch.arm_dir)}
    r = {x["id"]: x for x in _rows(realtime.arm_dir)}
    assert set(b) == set(r)
    assert all(b[i]["prediction"] == r[i]["prediction"] for i in b)  # deterministic per image
    assert {x["mode"] for x in b.values()} == {"batch"}
    assert all(x["latency_ms"] == "" for x in b.values())
    assert json.loads((batch.arm_dir / "arm.json").read_text())["emulated"] is True


def test_batch_failed_lines_are_retried_until_complete(small_prepared: Path, monkeypatch) -> None:
    e = _batch_emu(small_prepared, monkeypatch, batch_fail_rate=0.3)
    try:
        result = classify(small_prepared, _opts(mode="batch", split="train", batch_poll_s=0.05))
        realtime_calls = e.stats.chat_requests
    finally:
        e.stop()
    rows = _rows(result.arm_dir)
    assert len(rows) == 36 and all(x["valid"] == "1" and x["error"] == "" for x in rows)
    retried = [x for x in rows if x["mode"] == "realtime"]
    assert retried and len(retried) == realtime_calls
    # answered in the end: retried lines are not errors, and are counted on their own
    assert result.summary["errors"] == 0 and result.summary["error_kinds"] == {}
    assert result.summary["batch_lines_retried"] == len(retried)
    from vlm_classify.store import Store

    with Store.for_dir(small_prepared) as store:
        lines = store.remotes("zero-shot", "batch_failed_line")
    assert {x.key for x in lines} == {x["id"] for x in retried}
    assert {x.status for x in lines} == {"retried_answered"}


def test_batch_lines_still_failing_realtime_are_the_errors(
    small_prepared: Path, monkeypatch
) -> None:
    """Every line fails in the batch; realtime, every request fails too (500s, 2 tries)."""
    from vlm_classify.store import Store

    e = _batch_emu(small_prepared, monkeypatch, batch_fail_rate=1.0, faults="500=1")
    runner = FAST.model_copy(update={"max_attempts": 2})
    try:
        result = classify(small_prepared, _opts(mode="batch", batch_poll_s=0.05, runner=runner))
    finally:
        e.stop()
    assert result.summary["batch_lines_retried"] == 6
    assert result.summary["errors"] == 6 and result.summary["error_kinds"] == {"TransientError": 6}
    with Store.for_dir(small_prepared) as store:
        lines = store.remotes("zero-shot", "batch_failed_line")
    assert len(lines) == 6 and {x.status for x in lines} == {"retried_failed"}


def test_the_batch_client_is_closed_when_the_batch_phase_fails(
    small_prepared: Path, monkeypatch
) -> None:
    import asyncio

    from vlm_classify.backends.openai.batch import BatchSettings, run_batch
    from vlm_classify.backends.openai.chat import (
        ChatSettings,
        OpenAIChatBackend,
        parse_openai_model,
    )
    from vlm_classify.dataset.manifest import read_labels
    from vlm_classify.store import Store

    e = _batch_emu(small_prepared, monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")  # the batch calls are refused: 401
    items = [r for r in read_manifest(small_prepared) if r.split == "test"]
    backend = OpenAIChatBackend(
        parse_openai_model(f"openai/{MODEL}"),
        read_labels(small_prepared),
        small_prepared,
        ChatSettings(),
    )
    try:
        with Store.for_dir(small_prepared) as store, pytest.raises(FatalError, match="refused"):
            asyncio.run(run_batch(backend, items, store, "zs", BatchSettings(runner=FAST)))
    finally:
        e.stop()
    assert backend.client.is_closed()


def test_batch_rerun_reattaches_instead_of_paying_again(small_prepared: Path, monkeypatch) -> None:
    from vlm_classify.store import Store

    e = _batch_emu(small_prepared, monkeypatch, batch_seconds=1.0)
    try:
        # a run that is interrupted right after creating its batch (simulated by a store that
        # has the batch but no answers), then the same command again
        import openai

        first = classify(small_prepared, _opts(mode="batch", batch_poll_s=0.05, name="a"))
        created = len(openai.OpenAI(base_url=e.base_url, api_key=e.api_key).batches.list().data)
        with Store.for_dir(small_prepared) as store:
            store.forget("a", store.finished_ids("a"))  # answers lost, batch id kept
        again = classify(small_prepared, _opts(mode="batch", batch_poll_s=0.05, name="a"))
        after = len(openai.OpenAI(base_url=e.base_url, api_key=e.api_key).batches.list().data)
    finally:
        e.stop()
    assert after == created  # no new batch: re-attached
    assert _rows(first.arm_dir) == _rows(again.arm_dir)


def test_an_unrecorded_fine_tuned_deployment_falls_back_when_azure_refuses_batch(
    small_prepared: Path, monkeypatch
) -> None:
    # No fine-tune record names "my-ft": it is tried in batch, and the service's refusal sends
    # it realtime. (A deployment made by `deploy` is known up front: see test_finetune.py.)
    e = _batch_emu(small_prepared, monkeypatch)
    e.deploy("my-ft", "ft")
    messages: list[str] = []
    try:
        result = classify(
            small_prepared,
            _opts(model="azure/my-ft", mode="batch", batch_poll_s=0.05),
            on_status=messages.append,
        )
    finally:
        e.stop()
    assert any("the Batch API refused it" in m and "realtime instead" in m for m in messages)
    rows = _rows(result.arm_dir)
    assert len(rows) == 6 and {x["mode"] for x in rows} == {"realtime"}


def test_azure_batch(small_prepared: Path, monkeypatch) -> None:
    e = _batch_emu(small_prepared, monkeypatch)
    try:
        result = classify(
            small_prepared, _opts(model=f"azure/{MODEL}", mode="batch", batch_poll_s=0.05)
        )
    finally:
        e.stop()
    rows = _rows(result.arm_dir)
    assert len(rows) == 6 and {x["mode"] for x in rows} == {"batch"}


def test_batch_parts_respect_the_limits(tmp_path: Path) -> None:
    from vlm_classify.backends.openai.batch import write_parts
    from vlm_classify.backends.openai.export import ExportLimits

    lines = [(f"id{i}", f"line {i:03d}\n".encode()) for i in range(25)]  # 9 bytes each
    parts = write_parts(lines, tmp_path, ExportLimits(max_batch_lines=10, max_batch_bytes=1000))
    assert [len(p.ids) for p in parts] == [10, 10, 5]
    assert [p.path.name for p in parts] == ["part-001.jsonl", "part-002.jsonl", "part-003.jsonl"]
    parts = write_parts(lines, tmp_path, ExportLimits(max_batch_lines=100, max_batch_bytes=30))
    assert [len(p.ids) for p in parts] == [3] * 8 + [1]
    assert [cid for p in parts for cid in p.ids] == [cid for cid, _ in lines]
    assert b"".join(p.path.read_bytes() for p in parts) == b"".join(line for _, line in lines)
    assert len(list(tmp_path.glob("part-*.jsonl"))) == 9  # the earlier files were replaced
    import hashlib

    assert all(p.sha256 == hashlib.sha256(p.path.read_bytes()).hexdigest() for p in parts)


def test_exported_batch_lines_are_what_batch_mode_sends(
    small_prepared: Path, emu: Emulator
) -> None:
    from vlm_classify.backends.openai.chat import (
        ChatSettings,
        OpenAIChatBackend,
        parse_openai_model,
    )
    from vlm_classify.backends.openai.export import ExportOptions, export
    from vlm_classify.dataset.manifest import read_labels

    export(small_prepared, ExportOptions(model=f"openai/{MODEL}"))
    lines = [
        json.loads(x)
        for x in (small_prepared / "jsonl" / "test-batch.jsonl").read_text().splitlines()
    ]
    backend = OpenAIChatBackend(
        parse_openai_model(f"openai/{MODEL}"),
        read_labels(small_prepared),
        small_prepared,
        ChatSettings(),
    )
    by_id = {r.id: r for r in read_manifest(small_prepared)}
    assert len(lines) == 6
    for line in lines:
        assert line["body"] == backend.body(by_id[line["custom_id"]])
