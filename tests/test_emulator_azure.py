"""The emulator's Azure OpenAI routes, through the real `openai.AzureOpenAI` client."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx2
import openai
import pytest
from click.testing import CliRunner

from emulator_support import (
    MODEL,
    answer_label,
    assert_spec,
    chat_body,
    jsonl,
    rows_and_labels,
    training_lines,
    wait_for,
)
from vlm_classify.cli.emulator import emulator_cmd
from vlm_classify.emulator import Emulator, EmulatorConfig, parse_faults
from vlm_classify.errors import UserError

API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o-batch"


@pytest.fixture
def emu(small_prepared: Path):
    e = Emulator(
        EmulatorConfig(
            manifests=[small_prepared],
            accuracy=1.0,
            ft_accuracy=0.0,
            batch_seconds=0.2,
            ft_seconds=0.2,
            check_responses=True,
        )
    ).start()
    yield e
    e.stop()
    assert e.stats.schema_errors == []


def azure(emu: Emulator, **kw) -> openai.AzureOpenAI:
    kw.setdefault("api_key", emu.api_key)
    return openai.AzureOpenAI(
        azure_endpoint=emu.azure_endpoint, api_version=API_VERSION, max_retries=0, **kw
    )


def test_azure_chat_on_a_deployment(emu: Emulator, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    c = azure(emu)
    raw = c.chat.completions.with_raw_response.create(
        **chat_body(small_prepared, rows[0], labels, model=DEPLOYMENT)
    )
    assert raw.http_request.url.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert raw.http_request.url.params["api-version"] == API_VERSION
    assert raw.headers["x-emulated"] == "vlm-classify" and raw.headers["apim-request-id"]
    resp = raw.parse()
    assert answer_label(resp.choices[0].message.content) == rows[0].label
    assert_spec("CreateChatCompletionResponse", resp)
    # A client bound to the deployment works too, and so does the v1 API (Bearer or api-key).
    bound = azure(emu, azure_deployment=DEPLOYMENT)
    assert bound.chat.completions.create(**chat_body(small_prepared, rows[0], labels)).choices
    v1 = openai.OpenAI(base_url=emu.azure_v1_base_url, api_key=emu.api_key, max_retries=0)
    assert v1.chat.completions.create(
        **chat_body(small_prepared, rows[0], labels, model=DEPLOYMENT)
    ).choices
    v1_key = openai.OpenAI(
        base_url=emu.azure_v1_base_url,
        api_key="unused",
        default_headers={"api-key": emu.api_key},
        max_retries=0,
    )
    assert v1_key.models.list().data


def test_azure_wrong_key_and_missing_api_version(emu: Emulator, small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    with pytest.raises(openai.AuthenticationError) as e:
        azure(emu, api_key="wrong").chat.completions.create(
            **chat_body(small_prepared, rows[0], labels, model=DEPLOYMENT)
        )
    assert "Access denied" in e.value.message
    r = httpx2.get(f"{emu.azure_endpoint}/openai/models", headers={"api-key": emu.api_key})
    assert r.status_code == 404 and "api-version" in r.json()["error"]["message"]
    r = httpx2.get(
        f"{emu.azure_endpoint}/openai/models?api-version=soon", headers={"api-key": emu.api_key}
    )
    assert r.status_code == 400


def test_azure_rate_limit_message(small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    config = EmulatorConfig(manifests=[small_prepared], faults=parse_faults("429=1"))
    with Emulator(config) as e, pytest.raises(openai.RateLimitError) as err:
        azure(e).chat.completions.create(
            **chat_body(small_prepared, rows[0], labels, model=DEPLOYMENT)
        )
    assert "retry after" in err.value.message and err.value.response.headers["retry-after"] == "1"


def _batch_lines(prepared: Path, rows, labels, model: str) -> bytes:
    return jsonl(
        [
            {
                "custom_id": r.id,
                "method": "POST",
                "url": "/chat/completions",
                "body": chat_body(prepared, r, labels, model=model),
            }
            for r in rows
        ]
    )


def test_azure_batch_and_refusal_for_fine_tuned_deployments(
    emu: Emulator, small_prepared: Path
) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    train, _ = rows_and_labels(small_prepared, "train")
    c = azure(emu)
    f = c.files.create(
        file=("in.jsonl", io.BytesIO(_batch_lines(small_prepared, rows, labels, DEPLOYMENT))),
        purpose="batch",
    )
    batch = c.batches.create(
        input_file_id=f.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert batch.endpoint == "/chat/completions"
    batch = wait_for(
        lambda: c.batches.retrieve(batch.id), lambda b: b.status in ("completed", "failed")
    )
    assert batch.status == "completed", batch.errors
    out = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
    truth = {r.id: r.label for r in rows}
    assert {
        o["custom_id"]: answer_label(o["response"]["body"]["choices"][0]["message"]["content"])
        for o in out
    } == truth

    # Fine-tune through Azure: the model gets Azure's naming, and serves as a deployment.
    tf = c.files.create(
        file=("t.jsonl", io.BytesIO(jsonl(training_lines(small_prepared, train, labels)))),
        purpose="fine-tune",
    )
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=tf.id, suffix="dogs")
    job = wait_for(
        lambda: c.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed")
    )
    assert job.status == "succeeded"
    ft_name = job.fine_tuned_model
    assert ft_name.startswith(f"{MODEL}.ft-") and ft_name.endswith("-dogs")
    ft = c.chat.completions.create(**chat_body(small_prepared, rows[0], labels, model=ft_name))
    assert answer_label(ft.choices[0].message.content) != rows[0].label  # ft_accuracy=0

    ft_file = c.files.create(
        file=("ft.jsonl", io.BytesIO(_batch_lines(small_prepared, rows, labels, ft_name))),
        purpose="batch",
    )
    with pytest.raises(openai.BadRequestError) as e:
        c.batches.create(
            input_file_id=ft_file.id, endpoint="/chat/completions", completion_window="24h"
        )
    assert "fine-tuned" in e.value.message and e.value.body["code"] == "OperationNotSupported"

    # A deployment registered as fine-tuned is refused the same way, and answers at ft accuracy.
    emu.deploy("my-ft", "ft")
    ft_file2 = c.files.create(
        file=("ft2.jsonl", io.BytesIO(_batch_lines(small_prepared, rows, labels, "my-ft"))),
        purpose="batch",
    )
    with pytest.raises(openai.BadRequestError):
        c.batches.create(
            input_file_id=ft_file2.id, endpoint="/chat/completions", completion_window="24h"
        )
    unknown = "gpt-4o-2024-08-06.ft-0000-missing"
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(**chat_body(small_prepared, rows[0], labels, model=unknown))
    assert e.value.body["code"] == "DeploymentNotFound"


# --- the command line ---------------------------------------------------------------------------


def test_faults_spec_errors_are_one_line() -> None:
    assert parse_faults("429=0.1, drop=0.01").rate_429 == 0.1
    for bad in ("429", "404=0.1", "429=lots", "429=2", "429=0.6,500=0.6", "drop=0.1,drop=0.2"):
        with pytest.raises(UserError) as e:
            parse_faults(bad)
        assert "\n" not in str(e.value) and "--faults" in str(e.value)
    result = CliRunner().invoke(emulator_cmd, ["--faults", "429=x"])
    assert isinstance(result.exception, UserError)


def test_module_runs_in_the_foreground_and_prints_exports(small_prepared: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-real-secret-do-not-print"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vlm_classify.emulator",
            "--port",
            "0",
            "--manifest",
            str(small_prepared / "manifest.csv"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        exports = dict(
            proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(5)
        )
        assert set(exports) == {
            "OPENAI_BASE_URL",
            "OPENAI_API_KEY",
            "AZURE_OPENAI_ENDPOINT",
            "AZURE_OPENAI_API_KEY",
            "OPENAI_API_VERSION",
        }
        assert exports["OPENAI_API_KEY"] == "sk-emulator"
        c = openai.OpenAI(
            base_url=exports["OPENAI_BASE_URL"], api_key=exports["OPENAI_API_KEY"], max_retries=0
        )
        assert c.models.list().data
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "sk-real-secret" not in err
    assert "48 known images" in err
