"""Wire formats: bodies, Batch lines and fine-tuning lines against the spec; response parsing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from vlm_classify.backends.openai import spec
from vlm_classify.backends.openai import wire as w
from vlm_classify.prompts import system_prompt

LABELS = ["Beagle", "Chihuahua", "Golden Retriever"]
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3


def _messages(detail: w.Detail = "low") -> list[dict[str, Any]]:
    return w.classification_messages(system_prompt(LABELS), w.image_data_url(JPEG), detail)


def test_image_data_url_round_trips() -> None:
    url = w.image_data_url(JPEG)
    prefix, b64 = url.split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    assert base64.b64decode(b64) == JPEG
    assert w.image_data_url(b"x", "image/png").startswith("data:image/png;base64,")


def test_sniff_image_mime() -> None:
    assert w.sniff_image_mime(JPEG[:16]) == "image/jpeg"
    assert w.sniff_image_mime(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR") == "image/png"
    assert w.sniff_image_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert w.sniff_image_mime(b"GIF89a\0\0\0\0\0\0") is None
    assert w.sniff_image_mime(b"") is None


def test_classification_messages_shape() -> None:
    system, user = _messages("high")
    assert system == {"role": "system", "content": system_prompt(LABELS)}
    assert user["role"] == "user"
    (part,) = user["content"]
    assert part["type"] == "image_url"
    assert part["image_url"]["detail"] == "high"
    assert part["image_url"]["url"].startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("answer", w.ANSWER_MODES)
def test_chat_body_is_valid(answer: w.AnswerMode) -> None:
    body = w.chat_body("gpt-4o-2024-08-06", _messages(), answer=answer, labels=LABELS)
    assert spec.validate(w.CHAT_REQUEST, body) == []
    assert body["temperature"] == 0
    assert body["max_completion_tokens"] == w.DEFAULT_MAX_TOKENS[answer]
    assert "max_tokens" not in body
    if answer == "enum":
        schema = body["response_format"]["json_schema"]
        assert schema["strict"] is True
        assert schema["schema"]["properties"]["label"]["enum"] == LABELS
    else:
        assert "response_format" not in body


def test_chat_body_options() -> None:
    body = w.chat_body(
        "m",
        _messages(),
        answer="text",
        max_tokens=7,
        logprobs=True,
        top_logprobs=5,
        seed=42,
        token_field="max_tokens",
    )
    assert spec.validate(w.CHAT_REQUEST, body) == []
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["seed"] == 42
    with pytest.raises(ValueError, match="label list"):
        w.chat_body("m", _messages(), answer="enum")
    with pytest.raises(ValueError, match="answer mode"):
        w.chat_body("m", _messages(), answer="json")  # type: ignore[arg-type]


def test_batch_line_valid_openai_and_azure() -> None:
    body = w.chat_body("gpt-4o-2024-08-06", _messages(), labels=LABELS)
    line = w.batch_line("n00000000/test_0", body)
    assert line == {
        "custom_id": "n00000000/test_0",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
    }
    assert w.batch_line_errors(line) == []
    azure = w.batch_line(
        "x", w.chat_body("my-deployment", _messages(), labels=LABELS), url=w.AZURE_CHAT_URL
    )
    assert azure["url"] == "/chat/completions"
    assert w.batch_line_errors(azure) == []


def test_batch_line_errors_name_the_field() -> None:
    body = w.chat_body("m", _messages(), labels=LABELS)
    assert w.batch_line_errors({**w.batch_line("a", body), "method": "GET"}) == [
        "method: 'GET' is not 'POST'"
    ]
    assert w.batch_line_errors({**w.batch_line("", body)}) == [
        "custom_id: a non-empty string is required"
    ]
    assert w.batch_line_errors(w.batch_line("a", body, url="/v1/embeddings"))[0].startswith("url:")
    bad = w.batch_line("a", {**body, "messages": []})
    assert w.batch_line_errors(bad) == ["body.messages: [] should be non-empty"]
    assert w.batch_line_errors([]) == ["(root): a Batch line is a JSON object"]


def test_finetune_line_valid() -> None:
    line = w.finetune_line(_messages(), "Beagle")
    assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    assert line["messages"][-1] == {"role": "assistant", "content": "Beagle"}
    assert w.finetune_line_errors(line) == []


def test_finetune_line_errors() -> None:
    assert w.finetune_line_errors({"messages": _messages()}) == [
        "messages[1]: the last message must be the assistant's answer"
    ]
    line = w.finetune_line(_messages(), "Beagle")
    line["messages"][-1]["weight"] = 2
    assert w.finetune_line_errors(line) == ["messages[2].weight: 2 is not one of [0, 1]"]
    assert (
        w.finetune_line_errors({"messages": [], "extra": 1})[0]
        == "(root): unexpected keys ['extra']"
    )


def test_dumps_line_is_compact_utf8_jsonl() -> None:
    text = w.dumps_line({"a": [1, 2], "b": "Löwchen"})
    assert text == '{"a":[1,2],"b":"Löwchen"}\n'
    assert json.loads(text) == {"a": [1, 2], "b": "Löwchen"}


def _response(content: str | None = '{"label":"Beagle"}', logprobs: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1727000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 580, "completion_tokens": 6, "total_tokens": 586},
    }


def test_parse_chat_response() -> None:
    resp = _response()
    assert spec.validate("CreateChatCompletionResponse", resp) == []
    text, usage, logprobs = w.parse_chat_response(resp)
    assert text == '{"label":"Beagle"}'
    assert usage["prompt_tokens"] == 580 and usage["completion_tokens"] == 6
    assert logprobs is None


def test_parse_chat_response_logprobs_and_refusal() -> None:
    tokens = [{"token": "Beagle", "logprob": -0.01, "bytes": [66], "top_logprobs": []}]
    resp = _response("Beagle", {"content": tokens, "refusal": None})
    assert spec.validate("CreateChatCompletionResponse", resp) == []
    assert w.parse_chat_response(resp).logprobs == tokens
    refused = _response(None)
    refused["choices"][0]["message"]["refusal"] = "I can't help with that."
    assert spec.validate("CreateChatCompletionResponse", refused) == []
    assert w.parse_chat_response(refused).text is None
    with pytest.raises(ValueError, match="no choices"):
        w.parse_chat_response({"choices": []})


def test_parse_batch_output_lines() -> None:
    ok = {
        "id": "batch_req_1",
        "custom_id": "n00000000/test_0",
        "response": {"status_code": 200, "request_id": "req_1", "body": _response()},
        "error": None,
    }
    outcome = w.parse_batch_output_line(json.dumps(ok))
    assert outcome == ("n00000000/test_0", 200, _response())
    assert w.parse_chat_response(outcome.payload).text == '{"label":"Beagle"}'

    bad_request = {
        "id": "batch_req_2",
        "custom_id": "b",
        "response": {
            "status_code": 400,
            "request_id": "req_2",
            "body": {"error": {"message": "Invalid image"}},
        },
        "error": None,
    }
    assert w.parse_batch_output_line(bad_request) == (
        "b",
        400,
        {"error": {"message": "Invalid image"}},
    )

    expired = {
        "id": "batch_req_3",
        "custom_id": "c",
        "response": None,
        "error": {"code": "batch_expired", "message": "expired"},
    }
    assert w.parse_batch_output_line(json.dumps(expired)) == (
        "c",
        None,
        {"code": "batch_expired", "message": "expired"},
    )

    with pytest.raises(ValueError, match="custom_id"):
        w.parse_batch_output_line("{}")
