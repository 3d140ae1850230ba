"""OpenAI wire formats: chat bodies, Batch lines, fine-tuning lines and response parsing.

Pure functions on dicts: no client objects and no I/O (the spec checks read the shipped spec
once, through `spec`). Field names follow the shipped OpenAPI description.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal, NamedTuple

from ...prompts import answer_schema
from . import spec

Detail = Literal["low", "high", "auto"]
DETAILS: tuple[Detail, ...] = ("low", "high", "auto")
AnswerMode = Literal["enum", "text"]
ANSWER_MODES: tuple[AnswerMode, ...] = ("enum", "text")

CHAT_URL = "/v1/chat/completions"
"""The Batch API `url` for chat completions on OpenAI."""
AZURE_CHAT_URL = "/chat/completions"
"""The same on Azure OpenAI, whose Batch lines also name the deployment as `body.model`."""
BATCH_URLS = (CHAT_URL, AZURE_CHAT_URL)

DEFAULT_MAX_TOKENS: dict[AnswerMode, int] = {"text": 20, "enum": 50}
"""Room for the longest label as plain text (~10 tokens), or wrapped as `{"label": ...}`."""

IMAGE_MIME_TYPES = ("image/jpeg", "image/png", "image/webp")
"""The image types OpenAI accepts for vision fine-tuning (and GIF aside, for inference)."""

CHAT_REQUEST = "CreateChatCompletionRequest"
FT_ASSISTANT = "FineTuneChatCompletionRequestAssistantMessage"


def sniff_image_mime(head: bytes) -> str | None:
    """The MIME type from an image's first bytes (12 are enough): JPEG, PNG, WEBP, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url_prefix(mime: str = "image/jpeg") -> str:
    """`data:<mime>;base64,`: what precedes the base64 text of an image."""
    return f"data:{mime};base64,"


def image_data_url(image_bytes: bytes, mime: str = "image/jpeg") -> str:
    """An image as a base64 `data:` URL, the form the API takes inline."""
    return data_url_prefix(mime) + base64.b64encode(image_bytes).decode("ascii")


def classification_messages(
    system_text: str, image_url: str, detail: Detail = "low"
) -> list[dict[str, Any]]:
    """The study's request: the prompt as the system message, the image alone as the user message."""
    return [
        {"role": "system", "content": system_text},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_url, "detail": detail}}],
        },
    ]


def chat_body(
    model: str,
    messages: list[dict[str, Any]],
    *,
    answer: AnswerMode = "enum",
    labels: list[str] | None = None,
    max_tokens: int | None = None,
    temperature: float = 0,
    logprobs: bool = False,
    top_logprobs: int | None = None,
    seed: int | None = None,
    token_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
) -> dict[str, Any]:
    """A `CreateChatCompletionRequest` body.

    `answer="enum"` asks for structured output `{"label": <one of labels>}`; `"text"` for free
    text. `max_tokens` defaults per answer mode and is sent as `max_completion_tokens` (the spec
    marks `max_tokens` deprecated; pass `token_field="max_tokens"` for old Azure API versions).
    """
    if answer not in ANSWER_MODES:
        raise ValueError(f"unknown answer mode {answer!r}; choose one of {', '.join(ANSWER_MODES)}")
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
    body[token_field] = DEFAULT_MAX_TOKENS[answer] if max_tokens is None else max_tokens
    if answer == "enum":
        if not labels:
            raise ValueError("answer='enum' needs the label list")
        body["response_format"] = {"type": "json_schema", "json_schema": answer_schema(labels)}
    if logprobs:
        body["logprobs"] = True
        if top_logprobs is not None:
            body["top_logprobs"] = top_logprobs
    if seed is not None:
        body["seed"] = seed
    return body


def batch_line(custom_id: str, body: dict[str, Any], url: str = CHAT_URL) -> dict[str, Any]:
    """One Batch API input line (`url=AZURE_CHAT_URL` on Azure, with the deployment as model)."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def finetune_line(messages: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """One supervised fine-tuning example: the request messages, then the label as the answer."""
    return {"messages": [*messages, {"role": "assistant", "content": label}]}


def dumps_line(obj: Any) -> str:
    """Compact JSON on one line, UTF-8 as is, ending in a newline (JSONL)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"


# --- checks against the spec ---------------------------------------------------------------


def batch_line_errors(line: Any) -> list[str]:
    """Problems with a Batch input line: its envelope, then its body against the chat request."""
    if not isinstance(line, dict):
        return ["(root): a Batch line is a JSON object"]
    errors: list[str] = []
    extra = set(line) - {"custom_id", "method", "url", "body"}
    if extra:
        errors.append(f"(root): unexpected keys {sorted(extra)}")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        errors.append("custom_id: a non-empty string is required")
    if line.get("method") != "POST":
        errors.append(f"method: {line.get('method')!r} is not 'POST'")
    if line.get("url") not in BATCH_URLS:
        errors.append(f"url: {line.get('url')!r} is not one of {list(BATCH_URLS)}")
    body = line.get("body")
    if not isinstance(body, dict):
        errors.append("body: a JSON object is required")
    else:
        errors.extend(f"body.{e}" for e in spec.validate(CHAT_REQUEST, body))
    return errors


def finetune_line_errors(line: Any, model: str = "gpt-4o-2024-08-06") -> list[str]:
    """Problems with a chat fine-tuning line.

    The spec has no schema for it, so: its messages as a chat request for `model`, the last
    message as a `FineTuneChatCompletionRequestAssistantMessage`, and no other keys than the
    documented ones.
    """
    if not isinstance(line, dict):
        return ["(root): a fine-tuning line is a JSON object"]
    errors: list[str] = []
    extra = set(line) - {"messages", "tools", "parallel_tool_calls", "functions"}
    if extra:
        errors.append(f"(root): unexpected keys {sorted(extra)}")
    messages = line.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*errors, "messages: a non-empty list is required"]
    errors.extend(spec.validate(CHAT_REQUEST, {"model": model, "messages": messages}))
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        errors.append(
            f"messages[{len(messages) - 1}]: the last message must be the assistant's answer"
        )
    else:
        errors.extend(
            f"messages[{len(messages) - 1}].{e}" for e in spec.validate(FT_ASSISTANT, last)
        )
    return errors


# --- responses -----------------------------------------------------------------------------


class ChatAnswer(NamedTuple):
    """What a classifier needs from a chat completion."""

    text: str | None
    """The first choice's content; None when the model refused or returned no content."""
    usage: dict[str, Any]
    """The `usage` object as sent (`prompt_tokens`, `completion_tokens`, details), or `{}`."""
    logprobs: list[dict[str, Any]] | None
    """Per-token log probabilities of the content, when they were requested."""


def parse_chat_response(resp: dict[str, Any]) -> ChatAnswer:
    """Read a `CreateChatCompletionResponse` (ValueError when it has no choice)."""
    choices = resp.get("choices") or []
    if not choices:
        raise ValueError("chat completion response has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    lp = choice.get("logprobs")
    return ChatAnswer(
        text=message.get("content"),
        usage=dict(resp.get("usage") or {}),
        logprobs=(lp or {}).get("content"),
    )


class BatchOutcome(NamedTuple):
    """One line of a Batch output or error file."""

    custom_id: str
    status_code: int | None
    """The HTTP status of the request; None when it never got a response."""
    payload: dict[str, Any]
    """The response body on a response (a chat completion on 200), else the `error` object."""


def parse_batch_output_line(line: str | dict[str, Any]) -> BatchOutcome:
    """Read one line of a Batch output (or error) file (ValueError when it is not one)."""
    obj = json.loads(line) if isinstance(line, str) else line
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        raise ValueError("a Batch output line is a JSON object with a string custom_id")
    response = obj.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        return BatchOutcome(
            obj["custom_id"],
            int(status) if status is not None else None,
            response.get("body") or {},
        )
    return BatchOutcome(obj["custom_id"], None, obj.get("error") or {})
