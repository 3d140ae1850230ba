"""Chat completions: from a validated request body to a spec-shaped response.

Shared by the realtime endpoint and the Batch worker, so a batch line and the same realtime
request get the same answer.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..backends.openai import tokens
from ..errors import UserError
from ..image_rules import DETAILS, GPT4O_VISION, VisionRule
from ..pricing import lookup
from .apierror import ApiError
from .oracle import Decision, Oracle

SYSTEM_FINGERPRINT = "fp_emulated"
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
_BRACKETS = re.compile(r"\[([^\[\]]+)\]")
_FILLER_TOKENS = ("\n", " ", '"', ".", ",", ":")


@dataclass(frozen=True)
class ModelRoute:
    """Which model answers a request and how well."""

    requested: str
    """The model (OpenAI) or deployment (Azure) named by the request."""
    model: str
    """The model id written in the response's `model` field."""
    base: str
    """The base model (for a fine-tuned model, the one it was trained from)."""
    fine_tuned: bool
    kind: str
    """The key of the model's answers: `base`, `ft`, or a model with its own accuracy."""
    accuracy: float


@dataclass
class ImageRef:
    """One image part of a request, resolved."""

    sha256: str
    width: int
    height: int
    detail: str


@dataclass
class ChatResult:
    """A response body and what the emulator learned making it."""

    body: dict[str, Any]
    route: ModelRoute
    decision: Decision
    image: ImageRef | None
    images: list[ImageRef] = field(default_factory=list)


# --- reading the request -------------------------------------------------------------------


def image_parts(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """`(param path, image_url object)` for every image part, in order."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if (
                isinstance(part, dict)
                and part.get("type") == "image_url"
                and isinstance(part.get("image_url"), dict)
            ):
                out.append((f"messages[{i}].content[{j}].image_url", part["image_url"]))
    return out


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of a base64 `data:` URL (400 when it is not one)."""
    m = _DATA_URL.match(url)
    if not m:
        raise ApiError(
            400,
            "Invalid image URL: expected a base64 data URL (data:image/jpeg;base64,...).",
            param=param,
            code="invalid_image_url",
        )
    try:
        return base64.b64decode(url[m.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400,
            "Invalid base64 image data in the data URL.",
            param=param,
            code="invalid_image_format",
        ) from None


def resolve_image(image_url: dict[str, Any], param: str, oracle: Oracle) -> ImageRef:
    """Hash and measure one image; plain URLs must name a manifest image (no downloads here)."""
    url = str(image_url.get("url", ""))
    detail = str(image_url.get("detail") or "auto")
    truth = oracle.truth
    if url.lower().startswith("data:"):
        data = decode_data_url(url, param)
        sha = hashlib.sha256(data).hexdigest()
        known = truth.by_sha.get(sha)
        if known is not None:
            return ImageRef(sha, known.width, known.height, detail)
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Exception:
            raise ApiError(
                400,
                "You uploaded an unsupported image. Please make sure your image has one of the following formats: ['png', 'jpeg', 'gif', 'webp'].",
                param=param,
                code="invalid_image_format",
            ) from None
        return ImageRef(sha, width, height, detail)
    sha_for_url = truth.sha_for_url(url)
    if sha_for_url is None:
        raise ApiError(
            400,
            f"The emulator cannot download {url[:80]!r}: send images as base64 data URLs, or use URLs ending in a manifest image_path.",
            param=param,
            code="invalid_image_url",
        )
    known = truth.by_sha[sha_for_url]
    return ImageRef(sha_for_url, known.width, known.height, detail)


def answer_format(body: dict[str, Any]) -> tuple[bool, str, list[str] | None]:
    """`(structured, key, enum)`: whether to answer JSON, under which key, from which labels."""
    rf = body.get("response_format") or {}
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "json_object":
        return True, "label", None
    if kind != "json_schema":
        return False, "label", None
    schema = (rf.get("json_schema") or {}).get("schema") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(props, dict):
        for name, prop in props.items():
            if isinstance(prop, dict) and isinstance(prop.get("enum"), list):
                return True, name, [str(v) for v in prop["enum"]]
        required = schema.get("required") or list(props)
        if required:
            return True, str(required[0]), None
    return True, "label", None


def labels_in_prompt(messages: list[dict[str, Any]]) -> list[str] | None:
    """The label list written in the prompt as `[a, b, c]` (the study's template), if any."""
    found: list[str] | None = None
    for message in messages:
        content = message.get("content")
        texts = (
            [content]
            if isinstance(content, str)
            else [p.get("text", "") for p in content or [] if isinstance(p, dict)]
        )
        for text in texts:
            for m in _BRACKETS.finditer(str(text)):
                items = [x.strip() for x in m.group(1).split(",") if x.strip()]
                if len(items) >= 2:
                    found = items
    return found


# --- answering -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _vision_rule(base_model: str) -> VisionRule:
    """The image-token rule of `base_model`, from the shipped price table (the estimate's)."""
    try:
        return lookup(f"openai/{base_model}").vision
    except UserError:  # a model the price table does not know: count it as gpt-4o does
        return GPT4O_VISION


def image_token_count(image: ImageRef, base_model: str) -> int:
    """Billed tokens of one image, by the rule of the model it was sent to: the same pure
    function and price-table entry `estimate` uses, so a request's usage is its estimate."""
    detail = image.detail if image.detail in DETAILS else "auto"
    return tokens.image_tokens(image.width, image.height, detail, _vision_rule(base_model))  # type: ignore[arg-type]


def billed(counted: int, factor: float = 1.0) -> int:
    """Tokens billed for `counted` tokens when the service bills `factor` times the rules
    (`EmulatorConfig.bill_factor`); rounded up, and exactly `counted` at 1.0."""
    if factor == 1.0:
        return counted
    return math.ceil(round(counted * factor, 6))


def complete(
    body: dict[str, Any],
    route: ModelRoute,
    oracle: Oracle,
    *,
    completion_id: str,
    created: int,
    bill_factor: float = 1.0,
) -> ChatResult:
    """Answer a chat completion request (already validated against the spec).

    `usage.prompt_tokens` is the messages by the cookbook rule, the answer schema and each image
    by its model's rule, times `bill_factor` (1.0: exactly what `estimate` counts)."""
    messages: list[dict[str, Any]] = body["messages"]
    if body.get("stream"):
        raise ApiError(
            400,
            "The emulator does not stream: send stream=false.",
            param="stream",
            code="unsupported_value",
        )
    images = [resolve_image(obj, param, oracle) for param, obj in image_parts(messages)]
    image = images[-1] if images else None
    structured, key, enum = answer_format(body)
    allowed = enum or (oracle.truth.labels or None) or labels_in_prompt(messages)
    sha = image.sha256 if image else hashlib.sha256(b"").hexdigest()
    decision = oracle.decide(sha, route.kind, route.accuracy, allowed)
    content = (
        oracle.structured(decision, key)
        if structured
        else oracle.free_text(decision, sha, route.kind)
    )

    finish_reason = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    enc = tokens.encoding()
    ids = enc.encode(content, disallowed_special=())
    if limit is not None and len(ids) > int(limit):
        ids = ids[: int(limit)]
        content = enc.decode(ids)
        finish_reason = "length"

    prompt_text = tokens.count_chat_tokens(messages)
    rf = body.get("response_format") or {}
    if rf.get("type") == "json_schema":
        prompt_text += tokens.schema_tokens((rf.get("json_schema") or {}).get("schema") or {})
    prompt_images = sum(image_token_count(img, route.base) for img in images)
    prompt = billed(prompt_text + prompt_images, bill_factor)
    completion = len(ids)
    n = int(body.get("n") or 1)
    logprobs = None
    if body.get("logprobs"):
        logprobs = {
            "content": token_logprobs(content, ids, decision, int(body.get("top_logprobs") or 0)),
            "refusal": None,
        }
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
    response = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": route.model,
        "choices": [{**choice, "index": i} for i in range(n)],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion * n,
            "total_tokens": prompt + completion * n,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    return ChatResult(response, route, decision, image, images)


def token_logprobs(
    content: str, ids: list[int], decision: Decision, top_k: int
) -> list[dict[str, Any]]:
    """Per-token logprobs whose product is about the decision's confidence.

    The first token of the label carries log(confidence), with the alternatives sharing the rest
    of the mass in its `top_logprobs`; every other token is near-certain.
    """
    enc = tokens.encoding()
    pieces = [enc.decode_single_token_bytes(t) for t in ids]
    start = content.lower().find(decision.label.lower()) if decision.label else -1
    span = (-1, -1)
    if start >= 0:
        b0 = len(content[:start].encode("utf-8"))
        span = (b0, b0 + len(content[start : start + len(decision.label)].encode("utf-8")))
    conf = min(max(decision.confidence, 1e-6), 1.0)
    alternatives: list[tuple[str, float]] = []
    rest = 1.0 - conf
    weights = (0.6, 0.25, 0.15)
    for alt, w in zip(decision.alternatives, weights, strict=False):
        alt_ids = enc.encode(alt, disallowed_special=())
        if alt_ids and rest > 0:
            # Greedy decoding picked the label: keep every alternative less likely than it.
            p = min(rest * w, conf * 0.9)
            alternatives.append(
                (enc.decode_single_token_bytes(alt_ids[0]).decode("utf-8", "replace"), p)
            )

    out: list[dict[str, Any]] = []
    offset = 0
    seen_label = False
    for piece in pieces:
        text = piece.decode("utf-8", "replace")
        end = offset + len(piece)
        in_label = offset < span[1] and end > span[0]
        if in_label and not seen_label:
            seen_label = True
            lp = math.log(conf)
            tops = [(text, lp)]
            for alt_text, p in alternatives:
                if alt_text not in (t for t, _ in tops):
                    tops.append((alt_text, math.log(p)))
        else:
            lp = math.log(0.9995) if in_label else -1e-5
            tops = [(text, lp)]
            for i, filler in enumerate(_FILLER_TOKENS):
                if filler != text:
                    tops.append((filler, -12.0 - i))
        tops = sorted(tops, key=lambda t: -t[1])[:top_k]
        out.append(
            {
                "token": text,
                "logprob": lp,
                "bytes": list(piece),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))} for t, v in tops
                ],
            }
        )
        offset = end
    return out
