"""Failure looks like failure: a service that cannot be reached stops `classify` in seconds, with
one line naming the address and where it came from, exit code 1, and nothing recorded.

The address is a real closed port (bound, then released), so the real SDK meets a real refusal.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from vlm_classify.backends.openai.chat import (
    parse_openai_model,
    translate_error,
    unreachable_message,
)
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import TransientError, UnreachableError
from vlm_classify.runner import RunnerConfig

MODEL = "openai/gpt-4o-2024-08-06"
CLI = [sys.executable, "-c", "from vlm_classify.cli import main; main()"]
QUICK = RunnerConfig(initial_backoff_s=0.05, max_backoff_s=0.2, unreachable_wait_s=0.5)


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    start = time.monotonic()
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def _stored(prepared: Path, arm: str) -> tuple[int, int]:
    """(predictions, remote objects) recorded for the arm."""
    with sqlite3.connect(prepared / "runs.sqlite") as db:
        return tuple(  # type: ignore[return-value]
            db.execute(f"SELECT count(*) FROM {table} WHERE arm = ?", (arm,)).fetchone()[0]
            for table in ("predictions", "remote_objects")
        )


def _one_error_line(err: str) -> str:
    """The only thing written to stderr: one line, no traceback, no progress bar before it."""
    assert "Traceback" not in err and "Task exception" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.slow
def test_realtime_with_default_settings_stops_in_seconds(
    small_prepared: Path, closed_port: int
) -> None:
    """The issue's command: `classify --limit 2` against nothing, as a user runs it (~10 s)."""
    base = f"http://127.0.0.1:{closed_port}/v1"
    env = _env(OPENAI_BASE_URL=base, OPENAI_API_KEY="sk-anything")
    args = ["classify", str(small_prepared), "--model", MODEL, "--name", "zs", "--limit", "2"]
    code, out, err, elapsed = _cli(args, env)
    assert code == 1, (out, err)
    assert _one_error_line(err) == (
        f"error: cannot reach {base}/ (connection refused), set by OPENAI_BASE_URL: "
        "start the server or fix OPENAI_BASE_URL"
    )
    assert "accuracy" not in out  # no summary of a run that did not happen
    assert 9 <= elapsed < 20  # the short wait (10 s), not two minutes
    assert _stored(small_prepared, "zs") == (0, 0)  # the items are asked again next time


def test_batch_stops_at_its_first_call(small_prepared: Path, closed_port: int) -> None:
    base = f"http://127.0.0.1:{closed_port}/v1"
    env = _env(OPENAI_BASE_URL=base, OPENAI_API_KEY="sk-anything")
    args = ["classify", str(small_prepared), "--model", MODEL, "--name", "b", "--mode", "batch"]
    code, out, err, elapsed = _cli([*args, "--max-attempts", "3"], env)
    assert code == 1, (out, err)
    line = _one_error_line(err)
    assert line.startswith(
        f"error: cannot reach {base}/ (connection refused), set by OPENAI_BASE_URL"
    )
    assert elapsed < 10
    assert _stored(small_prepared, "b") == (0, 0)  # nothing uploaded, nothing recorded


def test_the_short_wait_bounds_a_run_with_many_attempts(
    small_prepared: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{closed_port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-anything")
    runner = QUICK.model_copy(update={"max_attempts": 1000})
    start = time.monotonic()
    with pytest.raises(UnreachableError, match="connection refused"):
        classify(small_prepared, ClassifyOptions(model=MODEL, name="zs", runner=runner))
    assert 0.5 <= time.monotonic() - start < 3
    assert _stored(small_prepared, "zs") == (0, 0)


def test_azure_names_its_endpoint_variable(
    small_prepared: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    options = ClassifyOptions(model="azure/my-deployment", name="az", runner=QUICK)
    with pytest.raises(UnreachableError) as e:
        classify(small_prepared, options)
    assert str(e.value) == (
        f"cannot reach http://127.0.0.1:{closed_port}/openai/ (connection refused), set by "
        "AZURE_OPENAI_ENDPOINT: start the server or fix AZURE_OPENAI_ENDPOINT"
    )


def test_an_unknown_host_and_a_tls_failure_are_unreachable(
    small_prepared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-anything")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://no-such-host.invalid/v1")
    with pytest.raises(UnreachableError, match=r"no-such-host\.invalid/v1/ \(name not found\)"):
        classify(small_prepared, ClassifyOptions(model=MODEL, name="dns", runner=QUICK))
    with Emulator(EmulatorConfig(manifests=[small_prepared])) as emu:  # speaks HTTP, not TLS
        monkeypatch.setenv("OPENAI_BASE_URL", f"https://127.0.0.1:{emu.port}/v1")
        with pytest.raises(UnreachableError, match=r"\(TLS failure: .+\), set by OPENAI_BASE_URL"):
            classify(small_prepared, ClassifyOptions(model=MODEL, name="tls", runner=QUICK))


def test_timeouts_and_dropped_connections_are_not_unreachable(small_prepared: Path) -> None:
    """They keep the ordinary retries: the service is there, or may be."""
    ref = parse_openai_model(MODEL)
    body = {"model": ref.name, "messages": [{"role": "user", "content": "hi"}]}

    async def failure(emu: Emulator, timeout: float) -> Exception:
        client = openai.AsyncOpenAI(
            base_url=emu.base_url, api_key=emu.api_key, max_retries=0, timeout=timeout
        )
        try:
            await client.chat.completions.create(**body)  # type: ignore[call-overload]
        except openai.OpenAIError as e:
            return e
        finally:
            await client.close()
        raise AssertionError("the request should have failed")

    for faults, timeout in (("drop=1", 5.0), ("timeout=1", 0.2)):
        with Emulator(EmulatorConfig(faults=faults, timeout_hold=1.0)) as emu:
            exc = asyncio.run(failure(emu, timeout))
        err = translate_error(exc, ref, emu.base_url)
        assert isinstance(err, TransientError) and err.unreachable is None, (faults, err)


def test_the_default_address_says_so() -> None:
    assert unreachable_message("https://api.openai.com/v1/", "name not found", None) == (
        "cannot reach https://api.openai.com/v1/ (name not found), the default address: "
        "check the network connection, or set OPENAI_BASE_URL"
    )


def test_the_address_in_a_message_carries_no_credentials() -> None:
    from vlm_classify.backends.openai.chat import public_address

    assert (
        public_address("https://user:s3cret@127.0.0.1:9/v1/?api-key=k2")
        == "https://127.0.0.1:9/v1/"
    )
    assert public_address("http://[::1]:8080/v1") == "http://[::1]:8080/v1"
