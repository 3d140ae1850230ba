"""OpenAI and Azure OpenAI chat models: clients from the environment, one request per item.

This module is the one place API failures are classified (retryable, this item only, or fatal)
and the one place a chat completion becomes a `Prediction`, for realtime and Batch alike.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import ssl
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from ...dataset.manifest import ManifestRow
from ...errors import (
    FatalError,
    ItemError,
    TransientError,
    UnreachableError,
    UserError,
    VlmClassifyError,
)
from ...models import OPENAI_PROVIDERS, ModelRef, parse_model
from ...pricing import GPT4O_VISION, VisionRule, lookup
from ...prompts import PromptStyle, parse_answer, parse_enum_answer, system_prompt
from ...runner import RunnerConfig, first_contact
from ..base import Prediction, Usage
from . import tokens
from .wire import (
    AnswerMode,
    Detail,
    chat_body,
    classification_messages,
    data_url_prefix,
    image_data_url,
    parse_chat_response,
)

EMULATOR_HEADER = "x-emulated"
OPENAI_HOST = "api.openai.com"
BATCH_PATHS = ("/files", "/batches")
"""The Batch API's collections: a server without them has no Batch API."""


def parse_openai_model(spec: str) -> ModelRef:
    """A model string for this backend: `openai/...` or `azure/<deployment>`."""
    return parse_model(spec, OPENAI_PROVIDERS)


def _env(name: str, why: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise UserError(f"{name} is not set: export {name}=... ({why})")
    return value


def make_client(ref: ModelRef, timeout: float = 60.0) -> openai.AsyncOpenAI:
    """An async client from the environment; the SDK's own retries are off (the runner retries).

    OpenAI: `OPENAI_API_KEY`, optional `OPENAI_BASE_URL` (any OpenAI-compatible server).
    Azure: `AZURE_OPENAI_ENDPOINT`, `AZURE_OPENAI_API_KEY`, `OPENAI_API_VERSION`; an endpoint ending
    in `/openai/v1` uses the newer v1 style, which needs no API version.
    """
    if ref.provider == "openai":
        key = _env("OPENAI_API_KEY", "your OpenAI API key, or any value for a local server")
        return openai.AsyncOpenAI(api_key=key, max_retries=0, timeout=timeout)
    endpoint = _env("AZURE_OPENAI_ENDPOINT", "e.g. https://<resource>.openai.azure.com")
    key = _env("AZURE_OPENAI_API_KEY", "the key of your Azure OpenAI resource")
    if urlsplit(endpoint).path.rstrip("/").endswith("/openai/v1"):
        return openai.AsyncOpenAI(
            base_url=endpoint.rstrip("/") + "/", api_key=key, max_retries=0, timeout=timeout
        )
    version = _env("OPENAI_API_VERSION", "e.g. 2024-10-21, or use an .../openai/v1 endpoint")
    return openai.AsyncAzureOpenAI(
        azure_endpoint=endpoint, api_key=key, api_version=version, max_retries=0, timeout=timeout
    )


def address_source(ref: ModelRef | None) -> str | None:
    """The environment variable the client's address comes from (None: the SDK's default)."""
    if ref is not None and ref.provider == "azure":
        return "AZURE_OPENAI_ENDPOINT"
    return "OPENAI_BASE_URL" if os.environ.get("OPENAI_BASE_URL", "").strip() else None


def public_address(url: str) -> str:
    """A URL as messages may show it: no user, password or query (a key can hide in either)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def unreachable_reason(exc: BaseException) -> str | None:
    """Why a connection could not be made at all, read from the causes of an SDK
    `APIConnectionError` (the transport's `ConnectError` and the OS error under it): `connection
    refused`, `name not found`, `TLS failure: ...`, or the OS's words for another failure to
    connect. None for everything else: a timeout (`APITimeoutError`), a connection dropped
    mid-request (`RemoteProtocolError`, `ReadError`)."""
    connect: BaseException | None = None
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "name not found"
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", None) or cause.reason or str(cause)
            return f"TLS failure: {str(detail).replace('_', ' ').lower()}"
        if type(cause).__name__ == "ConnectError":  # httpx's, httpx2's or httpcore's
            connect = cause
        elif connect is not None and isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror).lower()
        cause = cause.__cause__ or cause.__context__
    return None if connect is None else (str(connect) or "cannot connect")


def unreachable_message(address: str, reason: str, source: str | None) -> str:
    """The one line `classify` stops with when the service cannot be reached at all."""
    if source:
        return (
            f"cannot reach {address} ({reason}), set by {source}: start the server or fix {source}"
        )
    return (
        f"cannot reach {address} ({reason}), the default address: "
        "check the network connection, or set OPENAI_BASE_URL"
    )


def retry_after_seconds(headers: Any) -> float | None:
    """`retry-after-ms` or `retry-after` (seconds) from response headers, when present and numeric."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    return None


def translate_error(
    exc: Exception, ref: ModelRef | None = None, base_url: str | None = None
) -> VlmClassifyError:
    """Classify an SDK failure: retry it, record it against this item, or stop the run.

    A connection that could not be made at all (refused, unknown host, TLS) is retryable, and
    carries the `UnreachableError` naming `base_url` (the client's address) and the variable it
    came from, for the runner to stop with while nothing of the run has reached the service.
    """
    where = f" for {ref}" if ref else ""
    if isinstance(exc, openai.APITimeoutError):
        return TransientError(f"request timed out{where}")
    if isinstance(exc, openai.APIConnectionError):
        reason = unreachable_reason(exc)
        if reason is None:
            return TransientError(f"connection failed{where}: {exc}")
        address = public_address(base_url or str(exc.request.url))
        return TransientError(
            f"cannot reach {address} ({reason})",
            unreachable=UnreachableError(unreachable_message(address, reason, address_source(ref))),
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _error_message(exc)
        if status == 429:
            if "quota" in message.lower() and "insufficient" in message.lower():
                return FatalError(f"quota exhausted{where} (429): {message}")
            return TransientError(
                f"rate limited (429): {message}", retry_after_seconds(exc.response.headers)
            )
        if status >= 500 or status in (408, 409):
            return TransientError(
                f"server error ({status}): {message}", retry_after_seconds(exc.response.headers)
            )
        if status in (401, 403):
            var = "AZURE_OPENAI_API_KEY" if ref and ref.provider == "azure" else "OPENAI_API_KEY"
            return FatalError(f"the API key was refused ({status}): check {var}")
        if status == 404 and _batch_collection(exc):
            address = public_address(base_url or str(exc.request.url))
            return FatalError(
                f"{address} has no Batch API ({exc.request.method} "
                f"{exc.request.url.path}: 404): use --mode realtime"
            )
        if status == 404:
            kind = "deployment" if ref and ref.provider == "azure" else "model"
            return FatalError(f"{kind}{' ' + ref.name if ref else ''} not found (404): {message}")
        return ItemError(f"request refused ({status}): {message}")
    return ItemError(f"{type(exc).__name__}: {exc}")


def _batch_collection(exc: openai.APIStatusError) -> bool:
    """The request was to `/files` or `/batches` themselves (listing, creating): a server that
    does not know them has no Batch API (a 404 for one batch or file id is another matter)."""
    try:
        path = exc.request.url.path.rstrip("/")
    except AttributeError:  # no request attached (an error built by hand)
        return False
    return path.endswith(BATCH_PATHS)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


def label_confidence(
    text: str, logprobs: list[dict[str, Any]] | None, label: str, answer: AnswerMode
) -> float | None:
    """The probability the model gave the chosen label: the product of the probabilities of the
    tokens that spell it, from the response's logprobs.

    `enum`: the tokens of the label's string value in the `{"label": "..."}` answer. `text`: the
    tokens of the whole answer, only when the answer is exactly the label (a sentence that names
    it has no single probability for it). None when there are no logprobs, the answer is not
    exactly a label, or the tokens do not spell the answer.
    """
    if not logprobs:
        return None
    pieces = [
        bytes(t["bytes"]) if t.get("bytes") is not None else str(t.get("token", "")).encode()
        for t in logprobs
    ]
    content = b"".join(pieces)
    if content != text.encode("utf-8"):
        return None
    span: tuple[int, int] | None
    if answer == "text":
        if text.strip() != label:
            return None
        start = len(text[: len(text) - len(text.lstrip())].encode("utf-8"))
        span = (start, start + len(label.encode("utf-8")))
    else:
        span = _json_label_span(text, label)
        if span is None:
            return None
    total, offset = 0.0, 0
    for piece, token in zip(pieces, logprobs, strict=True):
        end = offset + len(piece)
        if offset < span[1] and end > span[0]:  # the token overlaps the label's bytes
            total += float(token.get("logprob", 0.0))
        offset = end
    return math.exp(total)


def _json_label_span(text: str, label: str) -> tuple[int, int] | None:
    """Byte span of `label`'s characters inside the answer `{"label": "<label>"}`, if it is there
    exactly as the label (escaped as JSON writes it)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(value, dict) and value.get("label") == label):
        return None
    raw = text.encode("utf-8")
    key = re.search(rb'"label"\s*:\s*"', raw)
    if key is None:
        return None
    for ascii_only in (False, True):
        inner = json.dumps(label, ensure_ascii=ascii_only)[1:-1].encode("utf-8")
        if raw.startswith(inner + b'"', key.end()):
            return (key.end(), key.end() + len(inner))
    return None


def prediction_from_response(
    resp: dict[str, Any], labels: list[str], answer: AnswerMode, latency_ms: float | None = None
) -> Prediction:
    """A chat completion (realtime or from a Batch output line) as a `Prediction`.

    An empty, refused or unparseable answer is kept as invalid: never dropped, never a label.
    """
    parsed = parse_chat_response(resp)
    text = parsed.text or ""
    label = parse_enum_answer(text, labels) if answer == "enum" else parse_answer(text, labels)
    if not text:
        refusal = ((resp.get("choices") or [{}])[0].get("message") or {}).get("refusal")
        text = refusal or ""
    usage = parsed.usage
    return Prediction(
        prediction=label,
        raw_answer=text,
        valid=label is not None,
        confidence=(
            label_confidence(parsed.text or "", parsed.logprobs, label, answer)
            if label is not None
            else None
        ),
        latency_ms=latency_ms,
        usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
    )


@dataclass
class ChatSettings:
    """What each request asks: saved with the arm."""

    prompt: PromptStyle = "full"
    detail: Detail = "low"
    answer: AnswerMode = "enum"
    logprobs: bool = True
    max_tokens: int | None = None
    seed: int | None = None


# --- what a served model's server does with a request -------------------------------------

PROBE_LABEL = "zq7x"
"""The only value the probe's schema allows: no model writes it unless the server makes it."""
PROBE_MAX_TOKENS = 32
"""Room for `{"label": "zq7x"}` in any tokenizer (a byte-level one spells it in about 16)."""


@dataclass(frozen=True)
class ServerSupport:
    """What a served model's server was seen to do with one request; saved with the arm."""

    enforces_response_format: bool | None
    """Asked for a schema whose only value is a nonsense token, it answered exactly that: it
    constrains answers to the schema. None: not checked (`--answer text`)."""
    logprobs: bool | None
    """Its response carried per-token log probabilities when asked. None: not asked."""

    def record(self) -> dict[str, bool | None]:
        return asdict(self)


def is_served(ref: ModelRef, base_url: str) -> bool:
    """An `openai/` model at another address than OpenAI's (vLLM, `transformers serve`...): what
    its server does with `response_format` and `logprobs` must be checked, not assumed."""
    return ref.provider == "openai" and (urlsplit(base_url).hostname or "") != OPENAI_HOST


def probe_body(model: str, answer: AnswerMode, logprobs: bool) -> dict[str, Any]:
    """One cheap text-only request. With `answer="enum"` its schema allows only `PROBE_LABEL`,
    which the prompt never mentions: only a server that enforces the schema answers with it."""
    messages = [
        {"role": "system", "content": "Reply with one word."},
        {"role": "user", "content": "Say hello."},
    ]
    return chat_body(
        model,
        messages,
        answer=answer,
        labels=[PROBE_LABEL],
        max_tokens=PROBE_MAX_TOKENS,
        logprobs=logprobs,
    )


def read_probe(resp: dict[str, Any], answer: AnswerMode, logprobs: bool) -> ServerSupport:
    """What the answer to `probe_body(model, answer, logprobs)` shows (ValueError: no choice)."""
    parsed = parse_chat_response(resp)
    enforced = None
    if answer == "enum":
        try:
            enforced = json.loads(parsed.text or "") == {"label": PROBE_LABEL}
        except ValueError:
            enforced = False
    return ServerSupport(enforced, bool(parsed.logprobs) if logprobs else None)


def adapt_settings(
    settings: ChatSettings, support: ServerSupport | None, address: str = "the server"
) -> tuple[ChatSettings, str | None]:
    """The settings a run uses on a server that does what `support` says, and the one line that
    says what changed (None: nothing did).

    An answer the server does not constrain is asked for and recorded as `text` (free text,
    parsed): it is never counted as a constrained one. No logprobs: none are asked for, and no
    confidence is recorded.
    """
    if support is None:
        return settings, None
    changes: dict[str, Any] = {}
    said = []
    if settings.answer == "enum" and support.enforces_response_format is False:
        changes["answer"] = "text"
        said.append(
            "does not enforce structured output (response_format), so answers are free text, "
            "parsed (answer: text)"
        )
    if settings.logprobs and support.logprobs is False:
        changes["logprobs"] = False
        said.append("returns no logprobs, so no confidence is recorded")
    if not changes:
        return settings, None
    return replace(settings, **changes), f"{address} {'; it '.join(said)}"


class ImageCache:
    """Each image's data URL, read and base64-encoded once: retries reuse it, and it is dropped
    once the item is final (answered, or recorded with an error: `OpenAIChatBackend.release`),
    so memory holds only the items in flight."""

    def __init__(self, prepared_dir: Path) -> None:
        self.root = Path(prepared_dir)
        self._urls: dict[str, str] = {}

    def url(self, item: ManifestRow, keep: bool = True) -> str:
        url = self._urls.get(item.id)
        if url is None:
            try:
                data = (self.root / item.image_path).read_bytes()
            except OSError as e:
                raise UserError(
                    f"cannot read {item.image_path} ({e.strerror}): rerun `vlm-classify prepare`"
                ) from None
            url = image_data_url(data)
            if keep:
                self._urls[item.id] = url
        return url

    def drop(self, item: ManifestRow) -> None:
        self._urls.pop(item.id, None)

    def __len__(self) -> int:
        return len(self._urls)


class OpenAIChatBackend:
    """Classify with a chat model through the official `openai` SDK (OpenAI, Azure, compatible)."""

    def __init__(
        self,
        ref: ModelRef,
        labels: list[str],
        prepared_dir: Path,
        settings: ChatSettings,
        client: openai.AsyncOpenAI | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.ref = ref
        self.name = str(ref)
        self.labels = labels
        self.settings = settings
        self.client = client or make_client(ref, timeout=timeout)
        self.images = ImageCache(prepared_dir)
        self._system = system_prompt(labels, settings.prompt)
        self._vision: VisionRule | None = None
        self.base_model: str | None = None
        """For a fine-tuned model: the `provider/model` it was trained from (its image rule)."""
        self.emulated = False
        """True once any response carried the emulator's header."""

    def translate(self, exc: Exception) -> VlmClassifyError:
        """`translate_error` with this backend's model and address."""
        return translate_error(exc, self.ref, str(self.client.base_url))

    def body(self, item: ManifestRow, keep_image: bool = True) -> dict[str, Any]:
        """The request body for one item (the same for realtime and Batch)."""
        s = self.settings
        messages = classification_messages(
            self._system, self.images.url(item, keep_image), s.detail
        )
        return chat_body(
            self.ref.name,
            messages,
            answer=s.answer,
            labels=self.labels,
            max_tokens=s.max_tokens,
            logprobs=s.logprobs,
            seed=s.seed,
        )

    async def classify(self, item: ManifestRow) -> Prediction:
        body = self.body(item)
        start = time.perf_counter()
        try:
            raw = await self.client.chat.completions.with_raw_response.create(**body)
        except openai.OpenAIError as e:
            raise self.translate(e) from None
        latency_ms = (time.perf_counter() - start) * 1000
        if raw.headers.get(EMULATOR_HEADER):
            self.emulated = True
        try:  # the JSON as sent: no round trip through the SDK's models
            prediction = prediction_from_response(
                raw.http_response.json(), self.labels, self.settings.answer, latency_ms
            )
        except ValueError as e:
            raise TransientError(f"unreadable response: {e}") from None
        self.images.drop(item)
        return prediction

    def release(self, item: ManifestRow) -> None:
        """The item is final (answered, or recorded with an error): drop its encoded image."""
        self.images.drop(item)

    def estimate_tokens(self, item: ManifestRow) -> int:
        """Tokens the `--tpm` cap counts for this item's request, from the body `classify` sends.

        Its prompt tokens as `estimate` counts them (`prompt_tokens_of`), plus the completion
        tokens it allows (`max_completion_tokens`): the service's limiters reserve that much for a
        request before it runs, so counting it keeps the cap on the safe side.
        """
        body = self.body(item)  # keeps the encoded image: `classify` reuses it
        allowed = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        return self.prompt_tokens_of(body, item) + allowed

    def estimate_prompt_tokens(self, item: ManifestRow) -> int:
        """The prompt tokens `estimate` counts for this item's request (the messages by the
        cookbook rule, the answer schema, the image by the model's rule): what the bill's
        `usage.prompt_tokens` should say. The image is not read (its tokens come from its size)."""
        s = self.settings
        messages = classification_messages(self._system, data_url_prefix(), s.detail)
        body = chat_body(
            self.ref.name,
            messages,
            answer=s.answer,
            labels=self.labels,
            max_tokens=s.max_tokens,
            logprobs=s.logprobs,
            seed=s.seed,
        )
        return self.prompt_tokens_of(body, item)

    def estimate_completion_tokens(self, item: ManifestRow) -> int:
        """The answer tokens `estimate` counts for this item: its true label, as this arm asks
        for answers (`{"label": ...}` or the bare label)."""
        return tokens.completion_tokens(item.label, self.settings.answer)

    def prompt_tokens_of(self, body: dict[str, Any], item: ManifestRow) -> int:
        """Prompt tokens of a request body for `item`, as `estimate` counts them."""
        total = tokens.count_chat_tokens(body["messages"])
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            total += tokens.schema_tokens(response_format["json_schema"].get("schema") or {})
        for message in body["messages"]:
            content = message.get("content")
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    detail: Detail = part["image_url"].get("detail") or "auto"
                    total += tokens.image_tokens(item.width, item.height, detail, self.vision())
        return total

    def vision(self) -> VisionRule:
        """How the model counts image tokens (from the price table; for a fine-tune the table does
        not name, its base model's, `base_model`; gpt-4o's when neither is there)."""
        if self._vision is None:
            self._vision = GPT4O_VISION
            for name in filter(None, (str(self.ref), self.base_model)):
                try:
                    self._vision = lookup(name).vision
                    break
                except UserError:
                    continue
        return self._vision

    async def probe(self, answer: AnswerMode, logprobs: bool) -> ServerSupport:
        """Send `probe_body` once and read what the server did with it."""
        body = probe_body(self.ref.name, answer, logprobs)
        try:
            raw = await self.client.chat.completions.with_raw_response.create(**body)
        except openai.OpenAIError as e:
            raise self.translate(e) from None
        if raw.headers.get(EMULATOR_HEADER):
            self.emulated = True
        try:
            return read_probe(raw.http_response.json(), answer, logprobs)
        except ValueError as e:
            raise TransientError(f"unreadable response: {e}") from None

    async def detect_emulator(self) -> bool:
        """Ask once whether the server is the built-in emulator (its responses carry a header).

        Any failure answers with what is known, except a service that cannot be reached at all:
        that raises its `TransientError` (with `unreachable` set), so a Batch run can stop early.
        """
        try:
            raw = await self.client.models.with_raw_response.list()
        except openai.OpenAIError as e:
            err = self.translate(e)
            if isinstance(err, TransientError) and err.unreachable is not None:
                raise err from None
            return self.emulated
        if raw.headers.get(EMULATOR_HEADER):
            self.emulated = True
        return self.emulated

    async def aclose(self) -> None:
        await self.client.close()


async def check_server(backend: OpenAIChatBackend, cfg: RunnerConfig) -> ServerSupport | None:
    """Ask a served model's server once, before a run, whether it enforces the answer schema and
    returns logprobs, as `backend.settings` would use them. None: OpenAI itself, Azure and the
    built-in emulator, which do both.

    A server that cannot be reached stops here with the one line of `UnreachableError` (after the
    runner's short wait); transient failures are retried as an item's are. One that refuses the
    request (a 4xx) is asked again more plainly: without `response_format` (it does not enforce
    it), then without `logprobs` (it has none). Any other failure is one line.
    """
    if not is_served(backend.ref, str(backend.client.base_url)):
        return None
    if await first_contact(backend.detect_emulator, cfg):
        return None
    answer, logprobs = backend.settings.answer, backend.settings.logprobs
    if answer == "text" and not logprobs:
        return ServerSupport(None, None)
    tries: list[tuple[AnswerMode, bool]] = [(answer, logprobs)]
    if answer == "enum":
        tries.append(("text", logprobs))
    if logprobs:
        tries.append(("text", False))
    address = public_address(str(backend.client.base_url))
    refused: VlmClassifyError | None = None
    for ask, lp in tries:
        try:
            seen = await first_contact(functools.partial(backend.probe, ask, lp), cfg)
        except ItemError as e:
            refused = e
            continue
        except TransientError as e:
            raise FatalError(f"checking what {address} supports: {e}") from None
        return ServerSupport(
            seen.enforces_response_format
            if ask == "enum"
            else (False if answer == "enum" else None),
            seen.logprobs if lp else (False if logprobs else None),
        )
    raise FatalError(f"checking what {address} supports: {refused}")
