"""Batch mode: the same requests as realtime, sent through the Batch API.

Build the JSONL (split by the documented count and size limits), upload, create, poll, download
the output and error files, and join on `custom_id` (output order is arbitrary). Every file and
batch id is stored the moment it exists, and each batch carries metadata naming the arm and the
exact input, so a rerun after a crash re-attaches instead of paying again. Lines that failed are
retried realtime. Scoring never knows which mode answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import openai

from .backends.openai import OpenAIChatBackend, prediction_from_response, translate_error
from .dataset.manifest import ManifestRow
from .errors import FatalError, ItemError, TransientError
from .export import ExportLimits
from .openai_wire import AZURE_CHAT_URL, CHAT_URL, batch_line, dumps_line, parse_batch_output_line
from .runner import Progress, RunSummary, run_items
from .store import Store

if TYPE_CHECKING:
    from .classify import ClassifyOptions

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
KIND = "batch"


def is_fine_tuned(name: str) -> bool:
    """OpenAI `ft:...` ids and Azure's `<base>.ft-<hex>` model names."""
    return name.startswith("ft:") or ".ft-" in name


def plan_parts(
    lines: list[tuple[str, bytes]], limits: ExportLimits
) -> list[list[tuple[str, bytes]]]:
    """Split `(custom_id, line)` pairs into input files within the line-count and byte limits."""
    parts: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = 0
    for cid, line in lines:
        if len(line) > limits.max_batch_bytes:
            raise ItemError(
                f"the request for {cid} alone is over the Batch file limit of {limits.max_batch_bytes:,} bytes"
            )
        if current and (
            len(current) >= limits.max_batch_lines or size + len(line) > limits.max_batch_bytes
        ):
            parts.append(current)
            current, size = [], 0
        current.append((cid, line))
        size += len(line)
    if current:
        parts.append(current)
    return parts


async def run_batch(
    backend: OpenAIChatBackend,
    items: list[ManifestRow],
    store: Store,
    arm: str,
    options: ClassifyOptions,
    on_progress: Callable[[Progress], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    limits: ExportLimits | None = None,
) -> RunSummary:
    """Answer every unfinished item through the Batch API; failed lines go realtime."""
    start = time.perf_counter()
    say = on_status or (lambda _m: None)
    limits = limits or ExportLimits()
    finished = store.finished_ids(arm)
    todo = [it for it in items if it.id not in finished]
    by_id = {it.id: it for it in todo}
    progress = Progress(
        total=len(items), done=len(items) - len(todo), skipped=len(items) - len(todo)
    )
    if on_progress:
        on_progress(progress)
    client = backend.client
    ref = backend.ref
    if ref.provider == "azure" and is_fine_tuned(ref.name):
        say("Azure OpenAI does not run batches on fine-tuned deployments: running realtime instead")
        return await _realtime(backend, todo, store, arm, options, on_progress, start, progress)

    await backend.detect_emulator()
    url = AZURE_CHAT_URL if ref.provider == "azure" else CHAT_URL
    lines = [(it.id, dumps_line(batch_line(it.id, backend.body(it), url)).encode()) for it in todo]
    parts = plan_parts(lines, limits)
    failed: set[str] = set()
    try:
        batches = []
        for n, part in enumerate(parts, start=1):
            content = b"".join(line for _cid, line in part)
            key = hashlib.sha256(content).hexdigest()[:24]
            batch = await _attach_or_create(
                client, store, arm, key, content, url, ref.provider, n, len(parts), say
            )
            if batch is None:  # refused: run these realtime
                failed.update(cid for cid, _ in part)
                continue
            batches.append((key, batch, {cid for cid, _ in part}))
        for key, batch, ids in batches:
            batch = await _follow(
                client, store, arm, key, batch, options.batch_poll_s, say, progress, on_progress
            )
            answered = await _collect(
                client, batch, backend, by_id, store, arm, progress, on_progress
            )
            await _record_failures(client, batch, store, arm, ids - answered)
            failed.update(ids - answered)
    except openai.OpenAIError as e:
        raise translate_error(e, ref) from None
    summary_errors = 0
    retries = 0
    if failed:
        say(f"{len(failed)} line(s) failed in the batch: retrying them realtime")
        rest = [by_id[i] for i in sorted(failed) if i in by_id]
        sub = await run_items(backend, rest, store, arm, "realtime", options.runner)
        summary_errors, retries = sub.errors, sub.retries
        progress.done += len(rest)
        if on_progress:
            on_progress(progress)
    await backend.aclose()
    return RunSummary(
        requested=len(todo),
        completed=len(todo),
        errors=summary_errors,
        retries=retries + len(failed),
        skipped=progress.skipped,
        wall_s=time.perf_counter() - start,
        error_kinds={"batch_line_failed": len(failed)} if failed else {},
    )


async def _realtime(backend, todo, store, arm, options, on_progress, start, progress) -> RunSummary:  # type: ignore[no-untyped-def]
    try:
        sub = await run_items(backend, todo, store, arm, "realtime", options.runner, on_progress)
    finally:
        await backend.aclose()
    sub.skipped = progress.skipped
    return sub


async def _attach_or_create(
    client: openai.AsyncOpenAI,
    store: Store,
    arm: str,
    key: str,
    content: bytes,
    url: str,
    provider: str,
    n: int,
    total: int,
    say: Callable[[str], None],
) -> Any:
    """The batch for this exact input: re-attached from the store or the service, else created."""
    known = store.remote(arm, KIND, key)
    if known:
        try:
            batch = await client.batches.retrieve(known.remote_id)
        except openai.NotFoundError:
            say(
                f"part {n}/{total}: batch {known.remote_id} is unknown to this server: creating a new one"
            )
        else:
            say(f"part {n}/{total}: re-attached to batch {batch.id} ({batch.status})")
            return batch
    metadata = {"vlm_classify_arm": arm[:64], "vlm_classify_input": key}
    async for existing in await client.batches.list(limit=100):
        if (existing.metadata or {}).get("vlm_classify_input") == key and existing.status not in {
            "failed",
            "expired",
            "cancelled",
        }:
            store.put_remote(arm, KIND, key, existing.id, existing.status)
            say(f"part {n}/{total}: found batch {existing.id} for this input ({existing.status})")
            return existing
    file_key = f"file-{key}"
    uploaded = store.remote(arm, "batch_input_file", file_key)
    if uploaded and known:  # the server lost the batch: it may have lost the file too
        uploaded = None
    if uploaded:
        file_id = uploaded.remote_id
    else:
        say(f"part {n}/{total}: uploading {len(content) / 1e6:.1f} MB")
        f = await client.files.create(
            file=(f"{arm}-{key}.jsonl", io.BytesIO(content)), purpose="batch"
        )
        file_id = f.id
        store.put_remote(arm, "batch_input_file", file_key, file_id)
    endpoint = "/chat/completions" if provider == "azure" else "/v1/chat/completions"
    try:
        batch = await client.batches.create(
            input_file_id=file_id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
            metadata=metadata,
        )
    except openai.BadRequestError as e:
        err = translate_error(e)
        say(f"part {n}/{total}: the Batch API refused it ({err}): running it realtime instead")
        return None
    store.put_remote(arm, KIND, key, batch.id, batch.status, input_file_id=file_id)
    say(f"part {n}/{total}: created batch {batch.id}")
    return batch


async def _follow(
    client: openai.AsyncOpenAI,
    store: Store,
    arm: str,
    key: str,
    batch: Any,
    poll_s: float,
    say: Callable[[str], None],
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
) -> Any:
    """Poll until the batch ends, reporting status changes and request counts."""
    last = None
    while True:
        counts = batch.request_counts
        state = (
            batch.status,
            counts.completed if counts else None,
            counts.failed if counts else None,
        )
        if state != last:
            done = (
                f" {counts.completed}/{counts.total} done, {counts.failed} failed" if counts else ""
            )
            say(f"batch {batch.id}: {batch.status}{done}")
            store.put_remote(arm, KIND, key, batch.id, batch.status)
            last = state
        if batch.status in TERMINAL:
            return batch
        await asyncio.sleep(poll_s)
        try:
            batch = await client.batches.retrieve(batch.id)
        except openai.OpenAIError as e:
            err = translate_error(e)
            if isinstance(err, FatalError):
                raise err from None
            if not isinstance(err, TransientError):
                raise err from None
            log.info("polling %s failed (%s); trying again", batch.id, err)


async def _record_failures(
    client: openai.AsyncOpenAI, batch: Any, store: Store, arm: str, missing: set[str]
) -> None:
    """Keep each failed line's error (from the error file, else 'no output') before retrying it."""
    if not missing:
        return
    reasons: dict[str, str] = {}
    if batch.error_file_id:
        text = (await client.files.content(batch.error_file_id)).text
        for raw in text.splitlines():
            try:
                outcome = parse_batch_output_line(raw)
            except ValueError:
                continue
            err = outcome.payload.get("error", outcome.payload)
            message = err.get("message") if isinstance(err, dict) else None
            reasons[outcome.custom_id] = f"{outcome.status_code or ''} {message or err}".strip()
    for cid in sorted(missing):
        reason = reasons.get(cid, f"no output line (batch {batch.status})")
        store.put_remote(arm, "batch_failed_line", cid, batch.id, status="retried", reason=reason)


async def _collect(
    client: openai.AsyncOpenAI,
    batch: Any,
    backend: OpenAIChatBackend,
    by_id: dict[str, ManifestRow],
    store: Store,
    arm: str,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
) -> set[str]:
    """Record every successful line of the output file; return the ids answered."""
    answered: set[str] = set()
    if not batch.output_file_id:
        return answered
    text = (await client.files.content(batch.output_file_id)).text
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            outcome = parse_batch_output_line(raw)
        except ValueError:
            log.warning("skipping an unreadable line of %s", batch.output_file_id)
            continue
        item = by_id.get(outcome.custom_id)
        if item is None or outcome.status_code != 200 or outcome.custom_id in answered:
            continue
        p = prediction_from_response(outcome.payload, backend.labels, backend.settings.answer)
        store.record(arm, item.id, item.label, p, attempts=1, mode="batch")
        answered.add(item.id)
        progress.done += 1
        if on_progress:
            on_progress(progress)
    return answered
