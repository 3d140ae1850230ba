"""Served models: an `openai/` arm on any OpenAI-compatible server. What the server does with the
answer schema and logprobs is asked before the run, and an answer it does not constrain is
recorded as free text, never as a constrained one.

The end-to-end test starts a real `transformers serve` (the `serving` extra of transformers) on a
tiny random Qwen2-VL saved to a temporary folder; the others use the built-in emulator, which
enforces the schema, and the pure functions.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import openai
import pytest

from cli_support import run_cli
from vlm_classify.backends.openai.chat import (
    PROBE_LABEL,
    ChatSettings,
    OpenAIChatBackend,
    ServerSupport,
    adapt_settings,
    check_server,
    is_served,
    parse_openai_model,
    probe_body,
    read_probe,
    translate_error,
)
from vlm_classify.backends.openai.wire import AnswerMode
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.errors import FatalError, ItemError, TransientError
from vlm_classify.runner import RunnerConfig

SERVER_START_S = 90.0
UNENFORCED = {"enforces_response_format": False, "logprobs": False}


# --- the pure parts --------------------------------------------------------------------------


def test_only_openai_models_elsewhere_than_openai_are_served() -> None:
    served = parse_openai_model("openai/Qwen/Qwen2-VL-2B-Instruct")
    assert served.name == "Qwen/Qwen2-VL-2B-Instruct"  # split at the first slash only
    assert is_served(served, "http://localhost:8000/v1/")
    assert not is_served(served, "https://api.openai.com/v1/")
    assert not is_served(parse_openai_model("azure/my-deployment"), "http://localhost:8000/")


def _response(content: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    lp = None if logprobs is None else {"content": logprobs}
    return {"choices": [{"message": message, "logprobs": lp}]}


def test_the_probe_tells_an_enforced_schema_from_an_obedient_model() -> None:
    body = probe_body("m", "enum", logprobs=True)
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == [PROBE_LABEL]
    assert PROBE_LABEL not in json.dumps(body["messages"])  # only the schema can make it say so
    token = [{"token": "x", "logprob": -0.1, "bytes": [120]}]
    enforced = read_probe(_response('{ "label" : "zq7x" }', token), "enum", True)
    assert enforced == ServerSupport(True, True)
    assert read_probe(_response("Hello"), "enum", True) == ServerSupport(False, False)
    assert read_probe(_response('{"label": "hello"}'), "enum", False) == ServerSupport(False, None)
    assert read_probe(_response("Hello", token), "text", True) == ServerSupport(None, True)


def test_an_unenforced_schema_turns_the_run_into_parsed_text() -> None:
    asked = ChatSettings(answer="enum", logprobs=True)
    same, said = adapt_settings(asked, ServerSupport(True, True), "http://h/v1/")
    assert same == asked and said is None
    used, said = adapt_settings(asked, ServerSupport(False, False), "http://h/v1/")
    assert (used.answer, used.logprobs) == ("text", False)
    assert said is not None and said.startswith("http://h/v1/ does not enforce structured output")
    assert "no confidence" in said
    used, said = adapt_settings(ChatSettings(answer="text"), ServerSupport(None, True))
    assert used == ChatSettings(answer="text") and said is None


def test_a_server_without_the_batch_api_is_one_line() -> None:
    ref = parse_openai_model("openai/Qwen/Qwen2-VL-2B-Instruct")
    base = "http://localhost:8000/v1/"
    request = httpx.Request("GET", base + "batches")
    exc = openai.NotFoundError(
        "Not Found", response=httpx.Response(404, request=request), body={"detail": "Not Found"}
    )
    err = translate_error(exc, ref, base)
    assert isinstance(err, FatalError)
    assert str(err) == f"{base} has no Batch API (GET /v1/batches: 404): use --mode realtime"
    # A 404 for one model (or one batch id) keeps its own meaning.
    request = httpx.Request("POST", base + "chat/completions")
    exc = openai.NotFoundError("x", response=httpx.Response(404, request=request), body=None)
    assert "not found (404)" in str(translate_error(exc, ref, base))


class _Server:
    """A backend whose server refuses some probes (`refuse`: answer modes and logprobs)."""

    def __init__(
        self,
        answer: AnswerMode,
        logprobs: bool,
        refuse: set[tuple[str, bool]],
        fail: Exception | None = None,
    ) -> None:
        self.ref = parse_openai_model("openai/Qwen/Qwen2-VL-2B-Instruct")
        self.client = SimpleNamespace(base_url="http://127.0.0.1:9/v1/")
        self.settings = ChatSettings(answer=answer, logprobs=logprobs)
        self.refuse = refuse
        self.fail = fail
        self.asked: list[tuple[str, bool]] = []

    async def detect_emulator(self) -> bool:
        return False

    async def probe(self, answer: str, logprobs: bool) -> ServerSupport:
        self.asked.append((answer, logprobs))
        if self.fail is not None:
            raise self.fail
        if (answer, logprobs) in self.refuse:
            raise ItemError("request refused (400): unsupported")
        return ServerSupport(True if answer == "enum" else None, True if logprobs else None)


def _check(server: _Server) -> ServerSupport | None:
    cfg = RunnerConfig(max_attempts=2, initial_backoff_s=0, max_backoff_s=0)
    return asyncio.run(check_server(server, cfg))  # type: ignore[arg-type]


def test_a_refused_schema_or_logprobs_is_asked_again_more_plainly() -> None:
    server = _Server("enum", True, refuse={("enum", True)})
    assert _check(server) == ServerSupport(False, True)
    assert server.asked == [("enum", True), ("text", True)]
    server = _Server("enum", True, refuse={("enum", True), ("text", True)})
    assert _check(server) == ServerSupport(False, False)
    server = _Server("text", False, refuse=set())
    assert _check(server) == ServerSupport(None, None) and server.asked == []  # nothing to ask


def test_a_probe_that_keeps_failing_is_one_line() -> None:
    server = _Server("enum", True, refuse={("enum", True), ("text", True), ("text", False)})
    with pytest.raises(FatalError, match=r"^checking what http://127.0.0.1:9/v1/ supports: "):
        _check(server)
    server = _Server("enum", True, refuse=set(), fail=TransientError("server error (500): boom"))
    with pytest.raises(FatalError) as e:
        _check(server)
    assert str(e.value) == "checking what http://127.0.0.1:9/v1/ supports: server error (500): boom"
    assert len(server.asked) == 2  # retried as an item is


# --- the built-in emulator enforces the schema ----------------------------------------------


def test_the_emulator_enforces_the_schema_and_is_not_probed(small_prepared: Path) -> None:
    settings = ChatSettings(answer="enum", logprobs=True)
    ref = parse_openai_model("openai/gpt-4o-2024-08-06")
    with Emulator(EmulatorConfig(manifests=[small_prepared])) as emu:

        async def go() -> tuple[ServerSupport | None, ServerSupport]:
            client = openai.AsyncOpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)
            backend = OpenAIChatBackend(ref, ["a", "b"], small_prepared, settings, client=client)
            try:
                skipped = await check_server(backend, RunnerConfig())
                return skipped, await backend.probe("enum", True)
            finally:
                await backend.aclose()

        skipped, probed = asyncio.run(go())
        assert emu.stats.chat_requests == 1  # the probe sent by hand: check_server sent none
    assert skipped is None  # the emulator is known: no probe, nothing changed
    assert probed == ServerSupport(True, True)  # what the probe would have found


# --- a real `transformers serve` -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(
        f"transformers serve did not answer within {SERVER_START_S:g} s:\n{log.read_text()}"
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`(base_url, model)`: a tiny random Qwen2-VL behind a real `transformers serve`, pinned to
    the model's folder (requests name it by its path), stopped at the end."""
    for module in ("fastapi", "uvicorn", "torch", "open_clip"):
        pytest.importorskip(module, reason="needs the local extra: pip install -e '.[local]'")
    # `transformers serve` with chat completions, as transformers 5 has it
    pytest.importorskip("transformers.cli.transformers", reason="needs transformers>=5")
    from local_support import write_qwen2_vl_dir

    root = tmp_path_factory.mktemp("served")
    model = str(write_qwen2_vl_dir(root / "qwen2-vl"))
    port = _free_port()
    log = root / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = "from transformers.cli.transformers import main; main()"
    args = ["serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", cmd, *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        _wait_until_up(proc, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rows(arm: Path) -> list[dict[str, str]]:
    with (arm / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_transformers_serve_answers_are_recorded_as_unconstrained_text(
    served: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from local_support import colour_prepared

    base_url, model = served
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    prepared = colour_prepared(tmp_path, {"train": 2, "val": 1, "test": 2})
    args = ["classify", str(prepared), "--model", f"openai/{model}", "--name", "served"]

    code, out, err = run_cli(args, capsys)
    assert code == 0, (out, err)
    assert "does not enforce structured output (response_format)" in out + err
    assert "Traceback" not in out + err
    arm = prepared / "arms" / "served"
    doc = json.loads((arm / "arm.json").read_text())
    assert doc["model"] == f"openai/{model}" and doc["emulated"] is False
    settings = doc["settings"]
    assert settings["answer"] == "text" and settings["logprobs"] is False
    assert settings["server"] == UNENFORCED
    rows = _rows(arm)
    assert len(rows) == 6 and doc["totals"]["items"] == 6
    for row in rows:  # every item answered (the random model's gibberish is mostly invalid)
        assert row["error"] == "" and row["mode"] == "realtime"
        assert row["valid"] == ("1" if row["prediction"] else "0")
        assert row["confidence"] == ""  # no logprobs: no probability
        assert int(row["completion_tokens"]) > 0
    assert doc["totals"]["answered"] == 6 and doc["totals"]["errors"] == 0

    # The same command resumes: the server is asked again and records the same settings.
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "6 items were already done" in out, (out, err)

    # `--answer text`: the schema is not asked about, only logprobs.
    code, out, err = run_cli([*args[:-1], "text", "--answer", "text", "--limit", "1"], capsys)
    assert code == 0, (out, err)
    settings = json.loads((prepared / "arms" / "text" / "arm.json").read_text())["settings"]
    assert settings["server"] == {"enforces_response_format": None, "logprobs": False}

    # No Batch API: one line, and nothing sent.
    code, out, err = run_cli([*args[:-1], "b", "--mode", "batch"], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert (
        lines[-1]
        == f"error: {base_url}/ has no Batch API (GET /v1/batches: 404): use --mode realtime"
    )
    assert "Traceback" not in err
