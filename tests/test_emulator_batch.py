"""The emulator's files and Batch API, through the real `openai` SDK."""

from __future__ import annotations

import io
import json
from pathlib import Path

import openai
import pytest

from emulator_support import answer_label, assert_spec, chat_body, jsonl, rows_and_labels, wait_for
from vlm_classify.emulator import Emulator, EmulatorConfig

DONE = ("completed", "failed", "cancelled", "expired")


@pytest.fixture
def emu(small_prepared: Path):
    e = Emulator(
        EmulatorConfig(
            manifests=[small_prepared],
            batch_seconds=0.3,
            batch_fail_rate=0.2,
            accuracy=0.6,
            check_responses=True,
        )
    ).start()
    yield e
    e.stop()
    assert e.stats.schema_errors == []


@pytest.fixture
def client(emu: Emulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.base_url, api_key=emu.api_key, max_retries=0)


def upload(
    c: openai.OpenAI, lines: list[dict] | bytes, purpose: str = "batch", name: str = "in.jsonl"
):
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return c.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


def test_files_round_trip(client: openai.OpenAI) -> None:
    f = upload(client, [{"a": 1}])
    assert_spec("OpenAIFile", f)
    assert f.purpose == "batch" and f.bytes == len(b'{"a": 1}\n') and f.filename == "in.jsonl"
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == b'{"a": 1}\n'
    assert [x.id for x in client.files.list(purpose="batch")] == [f.id]
    assert client.files.list(purpose="fine-tune").data == []
    deleted = client.files.delete(f.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError) as e:
        upload(client, [{"a": 1}], name="in.csv")
    assert ".jsonl" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="nonsense")  # type: ignore[arg-type]


def test_batch_output_matches_realtime_and_failures_go_to_error_file(
    client: openai.OpenAI, small_prepared: Path
) -> None:
    rows, labels = rows_and_labels(small_prepared)
    lines = [
        {
            "custom_id": r.id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": chat_body(small_prepared, r, labels),
        }
        for r in rows
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert_spec("Batch", batch)
    assert batch.status == "validating"
    seen = {batch.status}
    batch = wait_for(
        lambda: client.batches.retrieve(batch.id), lambda b: seen.add(b.status) or b.status in DONE
    )
    assert batch.status == "completed", batch
    assert {"validating", "in_progress", "completed"} <= seen
    assert_spec("Batch", batch)
    counts = batch.request_counts
    assert counts.total == len(rows) and counts.completed + counts.failed == len(rows)
    assert 0 < counts.failed < len(rows)  # batch_fail_rate=0.2
    assert batch.in_progress_at and batch.completed_at and batch.model == "gpt-4o-2024-08-06"

    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert len(out) == counts.completed and len(err) == counts.failed
    assert {o["custom_id"] for o in out} | {e["custom_id"] for e in err} == {r.id for r in rows}
    assert [o["custom_id"] for o in out] != sorted(
        o["custom_id"] for o in out
    )  # not in input order
    for e in err:
        assert (
            e["response"]["status_code"] == 500
            and e["response"]["body"]["error"]["type"] == "server_error"
        )

    by_id = {r.id: r for r in rows}
    for o in out[:10]:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["id"].startswith("batch_req_") and o["response"]["request_id"]
        body = o["response"]["body"]
        assert_spec("CreateChatCompletionResponse", body)
        realtime = client.chat.completions.create(
            **chat_body(small_prepared, by_id[o["custom_id"]], labels)
        )
        assert body["choices"][0]["message"]["content"] == realtime.choices[0].message.content
        assert body["usage"]["prompt_tokens"] == realtime.usage.prompt_tokens
    assert any(answer_label(o["response"]["body"]["choices"][0]["message"]["content"]) for o in out)
    listed = client.batches.list()
    assert [b.id for b in listed] == [batch.id]


def _line(url: str = "/v1/chat/completions", cid: str = "a") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url, "body": {"model": "gpt-4o"}}


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (jsonl([_line()]) + b"not json\n", "invalid_json_line"),
        (jsonl([_line("/v1/embeddings")]), "invalid_url"),
        (jsonl([_line("/chat/completions")]), "invalid_url"),  # Azure's spelling, refused by OpenAI
        (jsonl([_line(), _line()]), "duplicate_custom_id"),
    ],
)
def test_invalid_input_file_fails_the_batch(client: openai.OpenAI, lines: bytes, code: str) -> None:
    batch = client.batches.create(
        input_file_id=upload(client, lines).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = wait_for(lambda: client.batches.retrieve(batch.id), lambda b: b.status in DONE)
    assert batch.status == "failed"
    assert batch.errors.data[0].code == code
    assert batch.errors.data[0].line in (1, 2)
    assert_spec("Batch", batch)


def test_invalid_line_body_fails_that_line_only(
    client: openai.OpenAI, small_prepared: Path
) -> None:
    rows, labels = rows_and_labels(small_prepared, "test")
    good = chat_body(small_prepared, rows[0], labels)
    bad = {**good, "temperature": "hot"}
    lines = [
        {"custom_id": "good", "method": "POST", "url": "/v1/chat/completions", "body": good},
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": bad},
    ]
    e = Emulator(EmulatorConfig(manifests=[small_prepared], batch_seconds=0)).start()
    try:
        c = openai.OpenAI(base_url=e.base_url, api_key=e.api_key, max_retries=0)
        batch = c.batches.create(
            input_file_id=upload(c, lines).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        assert batch.status == "completed"
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
        err = json.loads(c.files.content(batch.error_file_id).text)
        assert err["custom_id"] == "bad" and err["response"]["status_code"] == 400
        assert "temperature" in err["response"]["body"]["error"]["message"]
    finally:
        e.stop()


def test_cancel_a_batch(small_prepared: Path) -> None:
    rows, labels = rows_and_labels(small_prepared)
    with Emulator(EmulatorConfig(manifests=[small_prepared], batch_seconds=5)) as e:
        c = openai.OpenAI(base_url=e.base_url, api_key=e.api_key, max_retries=0)
        lines = [
            {
                "custom_id": r.id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": chat_body(small_prepared, r, labels),
            }
            for r in rows[:3]
        ]
        batch = c.batches.create(
            input_file_id=upload(c, lines).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        cancelled = c.batches.cancel(batch.id)
        assert cancelled.status == "cancelling"
        e.service.batches.seconds = 0.0  # let the cancellation finish now
        done = c.batches.retrieve(batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        with pytest.raises(openai.APIStatusError):
            c.batches.cancel(batch.id)


def test_batch_needs_a_batch_file(client: openai.OpenAI) -> None:
    f = upload(client, [{"messages": []}], purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h"
        )  # type: ignore[arg-type]
    assert "completion_window" in e.value.message
