"""The Batch API: input validation, the validating → in_progress → finalizing → completed
timeline on a compressed clock, and output/error files like the service writes them.

State advances lazily: whenever a batch is read, it catches up with the clock. Timestamps are
the logical times of each transition, not the times they were observed.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import draw
from .apierror import ApiError
from .state import FileRecord, Store

LineAnswerer = Callable[[dict[str, Any], str], tuple[int, dict[str, Any]]]
"""`(request body, api style) -> (status code, response body)`: how one line is answered."""

MAX_LINES = 50_000
CHAT_ENDPOINTS = ("/v1/chat/completions", "/chat/completions")
EXPIRY_SECONDS = 24 * 3600
# Fractions of the batch time at which each phase ends.
VALIDATING_END, IN_PROGRESS_END = 0.1, 0.8
CANCEL_DELAY = 0.1

ACTIVE = ("validating", "in_progress", "finalizing")


def _strip_v1(url: str) -> str:
    return url[3:] if url.startswith("/v1/") else url


@dataclass
class LineResult:
    """One answered line, kept as the output line it becomes (a batch holds up to 50,000: as
    text it is a third of the memory of the response as a dict)."""

    custom_id: str
    status_code: int
    line: bytes
    """The output (or error) file's line, `\\n` included."""
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class BatchRecord:
    """One batch and everything it produced."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    style: str
    model: str | None = None
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    results: list[LineResult] = field(default_factory=list)
    total: int = 0
    done: int = 0
    """Lines processed so far (in processing order)."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_started: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def counts(self) -> dict[str, int]:
        finished = self.results[: self.done]
        failed = sum(1 for r in finished if r.status_code != 200)
        return {"total": self.total, "completed": len(finished) - failed, "failed": failed}

    def usage(self) -> dict[str, Any]:
        inp = out = 0
        for r in self.results[: self.done]:
            if r.status_code == 200:
                inp += r.input_tokens
                out += r.output_tokens
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        }

    def to_api(self) -> dict[str, Any]:
        """The `Batch` object. Unset fields are left out: the spec has them non-nullable."""
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "created_at": int(self.created),
            "expires_at": int(self.created) + EXPIRY_SECONDS,
            "request_counts": self.counts(),
            "metadata": self.metadata,
        }
        if self.model:
            obj["model"] = self.model
        if self.errors:
            obj["errors"] = {"object": "list", "data": self.errors}
        for name, value in self.times.items():
            obj[f"{name}_at"] = value
        if self.output_file_id:
            obj["output_file_id"] = self.output_file_id
        if self.error_file_id:
            obj["error_file_id"] = self.error_file_id
        if self.status in ("completed", "cancelled", "finalizing"):
            obj["usage"] = self.usage()
        return obj


def _line_error(
    code: str, message: str, line: int | None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_input(
    lines: Iterable[bytes], endpoint: str, strict_url: bool = True
) -> tuple[int, list[dict[str, Any]]]:
    """`(requests, errors)`: the service's whole-file checks, reading the file line by line (it
    is never held whole); any error fails the batch. `requests` counts the lines.

    With `strict_url` (OpenAI) a line's url must be the endpoint itself; Azure also takes the
    other spelling (`/chat/completions` for `/v1/chat/completions` and back).
    """
    count = 0
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for n, line in enumerate(lines, start=1):
        try:
            raw = line.decode("utf-8")
        except UnicodeDecodeError:
            return 0, [
                _line_error(
                    "invalid_file_format", "The input file is not UTF-8 encoded JSONL.", None
                )
            ]
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            errors.append(
                _line_error("invalid_json_line", "This line is not parseable as valid JSON.", n)
            )
            continue
        if not isinstance(obj, dict):
            errors.append(_line_error("invalid_json_line", "Each line must be a JSON object.", n))
            continue
        missing = [k for k in ("custom_id", "method", "url", "body") if k not in obj]
        if missing:
            errors.append(
                _line_error(
                    "missing_required_parameter",
                    f"Missing required parameter: '{missing[0]}'.",
                    n,
                    missing[0],
                )
            )
            continue
        if obj["method"] != "POST":
            errors.append(
                _line_error("invalid_method", "Only the POST method is supported.", n, "method")
            )
        url = obj["url"]
        if not isinstance(url, str) or (
            url != endpoint if strict_url else _strip_v1(url) != _strip_v1(endpoint)
        ):
            errors.append(
                _line_error(
                    "invalid_url",
                    f"The URL provided for this request does not match the batch endpoint {endpoint}.",
                    n,
                    "url",
                )
            )
        cid = obj["custom_id"]
        if not isinstance(cid, str) or not cid:
            errors.append(
                _line_error(
                    "invalid_custom_id", "custom_id must be a non-empty string.", n, "custom_id"
                )
            )
        elif cid in seen:
            errors.append(
                _line_error(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request.",
                    n,
                    "custom_id",
                )
            )
        else:
            seen.add(cid)
        body = obj["body"]
        if not isinstance(body, dict):
            errors.append(_line_error("invalid_request", "body must be a JSON object.", n, "body"))
            continue
        line_model = body.get("model")
        if model is None:
            model = line_model
        elif line_model != model:
            errors.append(
                _line_error(
                    "mismatched_model",
                    "The model provided for this request does not match the model of the other requests in the batch.",
                    n,
                    "body.model",
                )
            )
        count += 1
    if not count and not errors:
        errors.append(_line_error("empty_file", "The input file is empty.", None))
    if count > MAX_LINES:
        errors.append(
            _line_error(
                "too_many_requests", f"A batch may hold at most {MAX_LINES} requests.", None
            )
        )
    return count, errors[:1000]


def requests_in(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The request lines of an input file `parse_input` accepted, parsed one at a time."""
    for raw in lines:
        text = raw.decode("utf-8")
        if text.strip():
            yield json.loads(text)


def models_in(lines: Iterable[bytes]) -> list[str]:
    """The distinct `body.model` values of an input file, skipping lines that do not parse."""
    found: list[str] = []
    for raw in lines:
        try:
            model = json.loads(raw.decode("utf-8", "replace")).get("body", {}).get("model")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(model, str) and model not in found:
            found.append(model)
    return found


class BatchRunner:
    """Creates batches and moves them along their timeline."""

    def __init__(
        self, store: Store, answer: LineAnswerer, seconds: float, fail_rate: float, seed: int
    ) -> None:
        self.store = store
        self.answer = answer
        self.seconds = seconds
        self.fail_rate = fail_rate
        self.seed = seed
        self.batches: dict[str, BatchRecord] = {}

    def create(self, body: dict[str, Any], style: str, input_file: FileRecord) -> BatchRecord:
        record = BatchRecord(
            id=self.store.new_id("batch_", 32, hexa=True),
            endpoint=body["endpoint"],
            input_file_id=input_file.id,
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            created=self.store.now(),
            style=style,
        )
        models = models_in(input_file.lines())
        record.model = models[0] if models else None
        with self.store.lock:
            self.batches[record.id] = record
        self.advance(record)
        return record

    def get(self, batch_id: str) -> BatchRecord:
        with self.store.lock:
            record = self.batches.get(batch_id)
        if record is None:
            raise ApiError(
                404,
                f"No batch found with id '{batch_id}'.",
                param="batch_id",
                code="batch_not_found",
            )
        self.advance(record)
        return record

    def all(self) -> list[BatchRecord]:
        """Every batch, newest first."""
        with self.store.lock:
            records = list(self.batches.values())
        for r in records:
            self.advance(r)
        return sorted(records, key=lambda r: (r.created, r.id), reverse=True)

    def cancel(self, batch_id: str) -> BatchRecord:
        record = self.get(batch_id)
        with record.lock:
            if record.status not in ("validating", "in_progress"):
                raise ApiError(
                    409,
                    f"Cannot cancel a batch with status '{record.status}'.",
                    param="batch_id",
                    code="batch_not_cancellable",
                )
            now = self.store.now()
            record.status = "cancelling"
            record.cancel_started = now
            record.times["cancelling"] = int(now)
        self.advance(record)
        return record

    # --- the timeline ------------------------------------------------------------------------

    def _at(self, record: BatchRecord, fraction: float) -> float:
        return record.created + fraction * self.seconds

    def advance(self, record: BatchRecord) -> None:
        """Catch the batch up with the clock."""
        with record.lock:
            now = self.store.now()
            if record.status == "validating" and now >= self._at(record, VALIDATING_END):
                self._validate_and_run(record)
            if record.status == "in_progress":
                span = (IN_PROGRESS_END - VALIDATING_END) * self.seconds
                progress = 1.0 if span <= 0 else (now - self._at(record, VALIDATING_END)) / span
                record.done = max(
                    record.done, min(record.total, math.floor(progress * record.total))
                )
                if now >= self._at(record, IN_PROGRESS_END):
                    record.done = record.total
                    record.status = "finalizing"
                    record.times["finalizing"] = int(self._at(record, IN_PROGRESS_END))
            if record.status == "finalizing" and now >= self._at(record, 1.0):
                self._write_files(record)
                record.status = "completed"
                record.times["completed"] = int(self._at(record, 1.0))
            if record.status == "cancelling" and record.cancel_started is not None:
                end = record.cancel_started + CANCEL_DELAY * self.seconds
                if now >= end:
                    self._write_files(record)
                    record.status = "cancelled"
                    record.times["cancelled"] = int(end)

    def _validate_and_run(self, record: BatchRecord) -> None:
        when = int(self._at(record, VALIDATING_END))
        with self.store.lock:
            input_file = self.store.files.get(record.input_file_id)
        total = 0
        if input_file is None:
            message = f"The input file {record.input_file_id} was deleted."
            errors = [_line_error("file_not_found", message, None)]
        else:
            total, errors = parse_input(
                input_file.lines(), record.endpoint, strict_url=record.style == "openai"
            )
        if errors or input_file is None:
            record.errors = errors
            record.status = "failed"
            record.times["failed"] = when
            return
        record.total = total
        # Read again and answered as read: one request (and its image) in memory at a time.
        record.results = [
            self._run_line(record, i, line)
            for i, line in enumerate(requests_in(input_file.lines()))
        ]
        # The service finishes lines in no particular order: a fixed shuffle per batch.
        random.Random(draw.hex_token(16, self.seed, "order", record.id)).shuffle(record.results)
        record.status = "in_progress"
        record.times["in_progress"] = when

    def _run_line(self, record: BatchRecord, index: int, line: dict[str, Any]) -> LineResult:
        cid = line["custom_id"]
        request_id = "req_" + draw.hex_token(32, self.seed, "batch-request", record.id, index)
        line_id = "batch_req_" + draw.hex_token(32, self.seed, "batch-line", record.id, index)
        if draw.uniform(self.seed, "batch-fail", record.id, cid) < self.fail_rate:
            status, body = (
                500,
                ApiError(
                    500, "The server had an error processing your request.", type="server_error"
                ).body(),
            )
        else:
            status, body = self.answer(line["body"], record.style)
        out = {
            "id": line_id,
            "custom_id": cid,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        text = json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n"
        usage = body.get("usage") if status == 200 else None
        return LineResult(
            cid,
            status,
            text.encode("utf-8"),
            int(usage.get("prompt_tokens", 0)) if usage else 0,
            int(usage.get("completion_tokens", 0)) if usage else 0,
        )

    def _write_files(self, record: BatchRecord) -> None:
        finished = record.results[: record.done]
        ok = [r for r in finished if r.status_code == 200]
        bad = [r for r in finished if r.status_code != 200]
        if ok or not bad:
            record.output_file_id = self.store.add_file(
                f"{record.id}_output.jsonl", "batch_output", (r.line for r in ok)
            ).id
        if bad:
            record.error_file_id = self.store.add_file(
                f"{record.id}_error.jsonl", "batch_output", (r.line for r in bad)
            ).id
        for r in record.results:  # written once: only the counts are read from now on
            r.line = b""
