"""Reliability, fast: the issue's fault mix, `kill -9` then resume (realtime and Batch), and no
API key in anything the tool writes. The full-size versions are `benchmarks/bench_classify_*.py`.

The kill tests run the real CLI in a child process against the emulator in this process, which
counts chat requests per image and per run, so "no finished item requested twice" is checked
against what the server actually received.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import openai
import pytest

from conftest import make_prepared_dir
from vlm_classify.backends.openai.chat import ChatSettings, OpenAIChatBackend, parse_openai_model
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import read_labels, read_manifest
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.runner import RunnerConfig, RunSummary, run_items
from vlm_classify.store import Store

MODEL = "openai/gpt-4o-2024-08-06"
SECRET = "sk-test-SECRET-4242-do-not-write"
ISSUE_FAULTS = "429=0.1,500=0.05,timeout=0.02,drop=0.01"
CLI = [sys.executable, "-c", "from vlm_classify.cli import main; main()"]


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    """Four classes, 25 test images each (100 items)."""
    return make_prepared_dir(
        tmp_path / "prepared", ["Beagle", "Borzoi", "Chihuahua", "Dingo"], {"test": 25}
    )


class CountingEmulator:
    """The emulator on a server thread, counting answered chat requests per image and phase."""

    def __init__(self, **config: object) -> None:
        config.setdefault("api_key", SECRET)
        self.emu = Emulator(EmulatorConfig(**config))  # type: ignore[arg-type]
        self.phase = "run1"
        self.counts: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()
        real_chat = self.emu.service.chat

        def chat(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = real_chat(*args, **kwargs)
            if result.image is not None:
                with self._lock:
                    self.counts.setdefault(self.phase, Counter())[result.image.sha256] += 1
            return result

        self.emu.service.chat = chat  # type: ignore[method-assign]

    def requested(self, phase: str, sha_to_id: dict[str, str]) -> Counter[str]:
        with self._lock:
            return Counter({sha_to_id[s]: n for s, n in self.counts.get(phase, {}).items()})

    def __enter__(self) -> CountingEmulator:
        self.emu.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.emu.stop()


def _env(emu: Emulator, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env.update(emu.env())
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str], logs: Path, name: str) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.out").open("wb") as out, (logs / f"{name}.err").open("wb") as err:
        return subprocess.Popen([*CLI, *args], stdout=out, stderr=err, env=env)


def _run(args: list[str], env: dict[str, str], logs: Path, name: str) -> int:
    proc = _start(args, env, logs, name)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _records(prepared: Path, arm: str) -> dict[str, tuple[int, str | None, str]]:
    """item id -> (valid, error, mode), read-only while another process may write."""
    path = prepared / "runs.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT item_id, valid, error, mode FROM predictions WHERE arm = ?", (arm,)
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _remote_count(prepared: Path, arm: str, kind: str) -> int:
    path = prepared / "runs.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(
            "SELECT count(*) FROM remote_objects WHERE arm = ? AND kind = ?", (arm, kind)
        ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed: slow it down"
        assert time.monotonic() < deadline, "the run never got far enough to be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def _files_with(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    hits = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            p = Path(folder) / name
            if not p.is_symlink() and needle in p.read_bytes():
                hits.append(p)
    return hits


def _test_ids(prepared: Path) -> dict[str, str]:
    """image sha256 -> item id, for the test split."""
    return {r.image_sha256: r.id for r in read_manifest(prepared) if r.split == "test"}


def _latency_csv(path: Path, ms: float) -> Path:
    path.write_text("latency_ms\n" + f"{ms}\n" * 5, encoding="utf-8")
    return path


# --- the issue's fault mix ------------------------------------------------------------------


def test_issue_fault_mix_ends_with_a_valid_record_for_every_item(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10% 429, 5% 500, 2% timeouts, 1% dropped connections: 100/100 valid, base64 once each."""
    from vlm_classify.backends.openai import chat as backend_module

    encodes = Counter[int]()
    real_encode = backend_module.image_data_url

    def counting(data: bytes, *a, **kw):  # type: ignore[no-untyped-def]
        encodes[hash(data)] += 1
        return real_encode(data, *a, **kw)

    monkeypatch.setattr(backend_module, "image_data_url", counting)
    cfg = EmulatorConfig(
        manifests=[prepared],
        faults=ISSUE_FAULTS,
        timeout_hold=1.0,
        retry_after_ms=5,
        seed=3,
    )
    runner = RunnerConfig(
        concurrency=16,
        max_attempts=10,
        initial_backoff_s=0.001,
        max_backoff_s=0.02,
        request_timeout_s=0.5,
    )
    with Emulator(cfg) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        result = classify(prepared, ClassifyOptions(model=MODEL, name="faults", runner=runner))
        stats = e.stats.as_dict()
    with sqlite3.connect(prepared / "runs.sqlite") as db:
        rows = db.execute(
            "SELECT valid, error, attempts FROM predictions WHERE arm = 'faults'"
        ).fetchall()
    assert len(rows) == 100
    assert all(valid == 1 and error is None for valid, error, _ in rows)
    assert set(stats["faults"]) == {"429", "500", "timeout", "drop"}  # each kind was met
    assert stats["chat_requests"] == sum(a for _, _, a in rows) > 100
    assert result.summary["retries"] == stats["chat_requests"] - 100
    # retries reuse each image's data URL: base64 once per image, not once per request
    assert len(encodes) == 100 and set(encodes.values()) == {1}


# --- kill -9, then the same command -----------------------------------------------------------


def test_kill_9_then_rerun_loses_nothing_and_asks_no_finished_item_again(
    prepared: Path, tmp_path: Path
) -> None:
    sha_to_id = _test_ids(prepared)
    ids = set(sha_to_id.values())
    logs = tmp_path / "logs"
    cmd = ["classify", str(prepared), "--model", MODEL, "--name", "k", "--concurrency", "4"]
    profile = _latency_csv(tmp_path / "latency.csv", 100)
    with CountingEmulator(manifests=[prepared], latency_profile=profile) as emu:
        env = _env(emu.emu)
        proc = _start(cmd, env, logs, "run1")
        _kill_when(proc, lambda: len(_records(prepared, "k")) >= 30)
        time.sleep(1.0)  # let the server take in whatever the dead client had sent
        finished = set(_records(prepared, "k"))
        emu.phase = "run2"
        assert _run(cmd, env, logs, "run2") == 0
        first = emu.requested("run1", sha_to_id)
        second = emu.requested("run2", sha_to_id)
    final = _records(prepared, "k")
    assert set(final) == ids  # nothing lost
    assert all(valid == 1 and error is None for valid, error, _ in final.values())
    assert 30 <= len(finished) < len(ids)
    assert not finished & set(second)  # no finished item requested (billed) again
    assert set(second) == ids - finished and set(second.values()) == {1}
    assert set(first.values()) == {1}
    # Only items in flight at the kill (asked, never recorded) were asked twice.
    in_flight = set(first) - finished
    assert {i for i in ids if first[i] + second[i] > 1} <= in_flight
    with sqlite3.connect(prepared / "runs.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "already done" in (logs / "run2.out").read_text()
    assert _files_with(tmp_path, SECRET) == []


def test_batch_killed_mid_run_reattaches_and_3_percent_failed_lines_end_complete(
    prepared: Path, tmp_path: Path
) -> None:
    sha_to_id = _test_ids(prepared)
    ids = set(sha_to_id.values())
    logs = tmp_path / "logs"
    cmd = ["classify", str(prepared), "--model", MODEL, "--name", "b", "--mode", "batch"]
    cmd += ["--poll", "0.05"]
    with CountingEmulator(manifests=[prepared], batch_fail_rate=0.03, batch_seconds=1.5) as emu:
        env = _env(emu.emu)
        proc = _start(cmd, env, logs, "run1")
        _kill_when(proc, lambda: _remote_count(prepared, "b", "batch") > 0)
        assert _records(prepared, "b") == {}  # killed while the batch was running
        assert _run(cmd, env, logs, "run2") == 0
        routes = emu.emu.stats.as_dict()["routes"]
        answered = emu.requested("run1", sha_to_id)
    final = _records(prepared, "b")
    assert set(final) == ids
    assert all(valid == 1 and error is None for valid, error, _ in final.values())
    assert routes["POST /v1/files"] == 1 and routes["POST /v1/batches"] == 1  # re-attached
    failed = _remote_count(prepared, "b", "batch_failed_line")
    # With this seed 3% of 100 lines fail (deterministically): each is retried realtime once.
    assert failed >= 1
    assert sum(mode == "realtime" for _, _, mode in final.values()) == failed
    assert set(answered) == ids and set(answered.values()) == {1}  # no item paid twice
    assert _files_with(tmp_path, SECRET) == []


# --- the API key stays out of every file --------------------------------------------------------


def test_the_api_key_is_in_no_file_log_or_report(prepared: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    cfg = EmulatorConfig(
        manifests=[prepared],
        api_key=SECRET,
        faults=ISSUE_FAULTS,
        timeout_hold=1.0,
        retry_after_ms=5,
        batch_seconds=0.3,
        batch_fail_rate=0.2,
    )
    base = ["classify", str(prepared), "--model", MODEL, "--limit", "30"]
    with Emulator(cfg) as emu:
        env = _env(emu)
        # debug logs of the SDK and HTTP layers, retries and faults included
        assert _run(["--debug", *base, "--name", "rt", "--timeout", "0.5"], env, logs, "rt") == 0
        azure = ["--debug", "classify", str(prepared), "--model", "azure/gpt-4o-2024-08-06"]
        azure += ["--name", "az", "--limit", "10", "--timeout", "0.5"]
        assert _run(azure, env, logs, "azure") == 0
        batch = [*base, "--name", "batch", "--mode", "batch", "--poll", "0.05"]
        assert _run(batch, env, logs, "batch") == 0
        wrong = _env(emu, OPENAI_API_KEY=SECRET + "-wrong")
        assert _run([*base, "--name", "refused"], wrong, logs, "wrong-key") == 1
    assert "API key was refused" in (logs / "wrong-key.err").read_text()
    assert (logs / "rt.err").stat().st_size > 10_000  # the debug logs were really written
    assert _files_with(tmp_path, SECRET) == []
    # and the check itself finds a leak when there is one
    (prepared / "arms" / "leak.txt").write_text(f"Authorization: Bearer {SECRET}")
    assert _files_with(tmp_path, SECRET) == [prepared / "arms" / "leak.txt"]


# --- a bad answer and a crash while recording a batch ------------------------------------


def test_a_response_without_choices_is_recorded_not_fatal(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = Emulator(EmulatorConfig(manifests=[prepared]))
    real_chat = emu.service.chat
    calls = Counter[str]()

    def chat(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_chat(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            result.body = {**result.body, "choices": []}
        return result

    emu.service.chat = chat  # type: ignore[method-assign]
    with emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        options = ClassifyOptions(model=MODEL, name="bad", limit=10)
        classify(prepared, options)
    assert len(_records(prepared, "bad")) == 10


def test_a_crash_while_recording_batch_output_does_not_pay_again(
    prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlm_classify.store import Store

    sha_to_id = _test_ids(prepared)
    options = ClassifyOptions(model=MODEL, name="b", mode="batch", batch_poll_s=0.05, limit=20)
    with CountingEmulator(manifests=[prepared], batch_seconds=0.3) as emu:
        for k, v in emu.emu.env().items():
            monkeypatch.setenv(k, v)
        classify(prepared, options)
        with Store.for_dir(prepared) as store:  # as if killed halfway through the output file
            store.forget("b", sorted(store.finished_ids("b"))[:10])
        classify(prepared, options)
        routes = emu.emu.stats.as_dict()["routes"]
        answered = emu.requested("run1", sha_to_id)
    assert len(_records(prepared, "b")) == 20
    assert routes["POST /v1/batches"] == 1
    assert set(answered.values()) == {1}


# --- memory: no image is kept once its item is final ---------------------------------------------


def test_failed_items_do_not_keep_their_image(prepared: Path, tmp_path: Path) -> None:
    """Answered, or recorded with an error once its retries ran out: each item's encoded image is
    dropped once it is final, so a long run with failures holds only the items in flight."""
    items = [r for r in read_manifest(prepared) if r.split == "test"][:40]
    runner = RunnerConfig(
        concurrency=8, max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.01
    )
    with Emulator(EmulatorConfig(manifests=[prepared], faults="500=0.5", seed=1)) as emu:
        client = openai.AsyncOpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)
        backend = OpenAIChatBackend(
            parse_openai_model(MODEL), read_labels(prepared), prepared, ChatSettings(), client
        )

        async def go() -> RunSummary:
            try:
                return await run_items(backend, items, store, "arm", "realtime", runner)
            finally:
                await backend.aclose()

        with Store(tmp_path / "runs.sqlite") as store:
            summary = asyncio.run(go())
            assert len(store.predictions("arm")) == 40
    assert summary.errors > 0 and summary.completed > 0  # both outcomes were met
    assert summary.completed + summary.errors == 40
    assert len(backend.images) == 0
