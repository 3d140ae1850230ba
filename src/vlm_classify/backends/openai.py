"""OpenAI and Azure OpenAI chat models: clients from the environment, one request per item.

This module is the one place API failures are classified (retryable, this item only, or fatal)
and the one place a chat completion becomes a `Prediction`, for realtime and Batch alike.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from ..dataset.manifest import ManifestRow
from ..errors import FatalError, ItemError, TransientError, UserError, VlmClassifyError
from ..models import OPENAI_PROVIDERS, ModelRef, parse_model
from ..openai_wire import (
    AnswerMode,
    Detail,
    chat_body,
    classification_messages,
    image_data_url,
    parse_chat_response,
)
from ..prompts import PromptStyle, parse_answer, parse_enum_answer, system_prompt
from .base import Prediction, Usage

EMULATOR_HEADER = "x-emulated"


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


def translate_error(exc: Exception, ref: ModelRef | None = None) -> VlmClassifyError:
    """Classify an SDK failure: retry it, record it against this item, or stop the run."""
    where = f" for {ref}" if ref else ""
    if isinstance(exc, openai.APITimeoutError):
        return TransientError(f"request timed out{where}")
    if isinstance(exc, openai.APIConnectionError):
        return TransientError(f"connection failed{where}: {exc}")
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
        if status == 404:
            kind = "deployment" if ref and ref.provider == "azure" else "model"
            return FatalError(f"{kind}{' ' + ref.name if ref else ''} not found (404): {message}")
        return ItemError(f"request refused ({status}): {message}")
    return ItemError(f"{type(exc).__name__}: {exc}")


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


def label_confidence(logprobs: list[dict[str, Any]] | None) -> float | None:
    """Probability of the whole answer: exp of the sum of its tokens' log probabilities."""
    if not logprobs:
        return None
    total = sum(float(t.get("logprob", 0.0)) for t in logprobs)
    return math.exp(total)


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
        confidence=label_confidence(parsed.logprobs) if label is not None else None,
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


class ImageCache:
    """Each image's data URL, read and base64-encoded once: retries reuse it, and it is dropped
    once the item is answered, so memory holds only the items in flight."""

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
        self.emulated = False
        """True once any response carried the emulator's header."""

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
            raise translate_error(e, self.ref) from None
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

    async def detect_emulator(self) -> bool:
        """Ask once whether the server is the built-in emulator (its responses carry a header)."""
        try:
            raw = await self.client.models.with_raw_response.list()
        except openai.OpenAIError:
            return self.emulated
        if raw.headers.get(EMULATOR_HEADER):
            self.emulated = True
        return self.emulated

    async def aclose(self) -> None:
        await self.client.close()
