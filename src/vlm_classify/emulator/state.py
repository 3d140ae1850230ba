"""The emulator's state: uploaded files, fine-tuned models, deterministic ids, counters.

Everything is in memory except the files' contents, which go to a temporary folder (removed with
the store): a Batch input or a training file of a full-size dataset is hundreds of MB, and the
emulator runs inside `vlm-classify run`, whose memory must not grow with the dataset. Readers
stream a file line by line (`FileRecord.lines`).

Everything is guarded by one re-entrant lock held only for short dictionary work; slow work (a
batch's answers, a training file's validation) runs under the object's own lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import draw
from .apierror import ApiError

T = TypeVar("T")

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""Purposes a client may upload with (the service writes `batch_output` and `fine-tune-results`)."""
OWNED_BY = "vlm-classify-emulator"
CHAT_LOG_SIZE = 10_000
"""Chat requests kept in `Stats.chat_log` (the oldest are forgotten)."""


@dataclass
class FileRecord:
    """One stored file; its content is on disk at `path`."""

    id: str
    filename: str
    purpose: str
    path: str
    size: int
    created_at: int

    def read(self) -> bytes:
        """The whole content (a download)."""
        with open(self.path, "rb") as fh:
            return fh.read()

    def lines(self) -> Iterator[bytes]:
        """The content line by line (each with its `\\n`), read as it goes."""
        with open(self.path, "rb") as fh:
            yield from fh

    def to_api(self) -> dict[str, Any]:
        """The `OpenAIFile` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class FineTunedModel:
    """A model made by a fine-tuning job."""

    id: str
    base: str
    created: int
    job_id: str


@dataclass(frozen=True)
class ChatArrival:
    """One chat completion request as the server received it (for rate-limit tests)."""

    at: float
    """`time.monotonic()` when its request line and headers had been read."""
    status: int | None
    """The status answered; None when closed without an answer (a `timeout` or `drop` fault)."""
    prompt_tokens: int | None
    """The answer's `usage.prompt_tokens` (None when not answered)."""
    max_tokens: int | None
    """The completion tokens the request allowed (`max_completion_tokens` or `max_tokens`)."""

    @property
    def tokens(self) -> int:
        """What a tokens-per-minute limiter counts for it: prompt plus allowed completion tokens."""
        return (self.prompt_tokens or 0) + (self.max_tokens or 0)


@dataclass
class Stats:
    """What the emulator has seen; read it from tests (`emu.stats`)."""

    requests: int = 0
    """HTTP requests received (all routes)."""
    chat_requests: int = 0
    """Chat completion requests received (before faults)."""
    answered: int = 0
    """Chat completions answered (200)."""
    faults: Counter[str] = field(default_factory=Counter)
    """Faults injected, by kind (`429`, `500`, `503`, `timeout`, `drop`, `ft_fail`)."""
    auth_failures: int = 0
    validation_errors: int = 0
    """Request bodies refused as invalid (400)."""
    unknown_images: int = 0
    """Chat answers for images not in the manifest."""
    routes: Counter[str] = field(default_factory=Counter)
    """Requests by `METHOD /route` (route with ids replaced by placeholders)."""
    schema_errors: list[str] = field(default_factory=list)
    """Responses that did not match the spec (only with `check_responses`)."""
    chat_log: deque[ChatArrival] = field(
        default_factory=lambda: deque(maxlen=CHAT_LOG_SIZE), repr=False
    )
    """The last `CHAT_LOG_SIZE` chat requests, in the order they ended; read `chat_arrivals()`."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def count(self, counter: str, key: str) -> None:
        with self.lock:
            getattr(self, counter)[key] += 1

    def add_schema_error(self, text: str) -> None:
        with self.lock:
            self.schema_errors.append(text)

    def log_chat(self, arrival: ChatArrival) -> None:
        with self.lock:
            self.chat_log.append(arrival)

    def chat_arrivals(self) -> list[ChatArrival]:
        """The logged chat requests, by arrival time."""
        with self.lock:
            return sorted(self.chat_log, key=lambda a: a.at)

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot (for printing or logging)."""
        with self.lock:
            return {
                "requests": self.requests,
                "chat_requests": self.chat_requests,
                "answered": self.answered,
                "faults": dict(self.faults),
                "auth_failures": self.auth_failures,
                "validation_errors": self.validation_errors,
                "unknown_images": self.unknown_images,
                "routes": dict(self.routes),
                "schema_errors": list(self.schema_errors),
            }


class Store:
    """Files, fine-tuned models, deployments and the id counters."""

    def __init__(self, seed: int, clock: Any = time.time) -> None:
        self.seed = seed
        self.clock = clock
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="vlm-classify-emulator-")
        """The files' contents (removed when the store is collected, or at exit)."""
        self.ft_models: dict[str, FineTunedModel] = {}
        self.deployments: dict[str, str] = {}
        self._counters: Counter[str] = Counter()

    def now(self) -> float:
        return float(self.clock())

    def next_number(self, kind: str) -> int:
        """1, 2, 3... per kind: the request counter faults and latencies are drawn from."""
        with self.lock:
            self._counters[kind] += 1
            return self._counters[kind]

    def new_id(self, prefix: str, length: int = 24, hexa: bool = False) -> str:
        """A fresh id, deterministic given the seed and how many were made before."""
        n = self.next_number(f"id:{prefix}")
        body = (
            draw.hex_token(length, self.seed, prefix, n)
            if hexa
            else draw.token(length, self.seed, prefix, n)
        )
        return prefix + body

    # --- files ---------------------------------------------------------------------------------

    def add_file(
        self, filename: str, purpose: str, data: bytes | memoryview | Iterable[bytes]
    ) -> FileRecord:
        """Store a file: its content at once, or as chunks (written as they come)."""
        file_id = self.new_id("file-", 22)
        path = os.path.join(self._folder.name, file_id)
        size = 0
        with open(path, "wb") as fh:
            for chunk in [data] if isinstance(data, (bytes, memoryview)) else data:
                size += fh.write(chunk)
        record = FileRecord(file_id, filename, purpose, path, size, int(self.now()))
        with self.lock:
            self.files[record.id] = record
        return record

    def get_file(self, file_id: str, param: str | None = None) -> FileRecord:
        with self.lock:
            record = self.files.get(file_id)
        if record is None:
            raise ApiError(
                404, f"No such File object: {file_id}", param=param or "id", code="file_not_found"
            )
        return record

    def delete_file(self, file_id: str) -> None:
        with self.lock:
            record = self.files.pop(file_id, None)
        if record is None:
            raise ApiError(
                404, f"No such File object: {file_id}", param="id", code="file_not_found"
            )
        with contextlib.suppress(OSError):  # a reader that has it open keeps reading (POSIX)
            os.unlink(record.path)

    # --- models --------------------------------------------------------------------------------

    def add_ft_model(self, model: FineTunedModel) -> None:
        with self.lock:
            self.ft_models[model.id] = model

    def ft_model(self, name: str) -> FineTunedModel | None:
        """The fine-tuned model `name`, or the one a checkpoint name (`...:ckpt-step-N`) belongs to."""
        with self.lock:
            if name in self.ft_models:
                return self.ft_models[name]
            head, sep, _ = name.rpartition(":ckpt-step-")
            return self.ft_models.get(head) if sep else None


def page(
    items: Sequence[T], after: str | None, limit: int | None, key: Any = lambda x: x.id
) -> tuple[list[T], bool]:
    """Cursor pagination as the API does it: the items after id `after`, at most `limit`."""
    start = 0
    if after:
        ids = [key(x) for x in items]
        if after in ids:
            start = ids.index(after) + 1
    limit = 20 if limit is None else max(1, min(int(limit), 10000))
    chunk = list(items[start : start + limit])
    return chunk, start + limit < len(items)
