"""Batch mode: the same requests as realtime, sent through the Batch API.

Write the JSONL line by line (split by the documented count and size limits), upload, create,
poll, download the output and error files, and join on `custom_id` (output order is arbitrary).
Every file and batch id is stored the moment it exists, and each batch carries metadata naming
the arm and the exact input, so a rerun after a crash re-attaches instead of paying again; a
finished batch's output is collected again before anything new is sent. Lines that failed are
retried realtime. Scoring never knows which mode answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import openai

from .arms import arm_dir
from .backends.openai import OpenAIChatBackend, prediction_from_response, translate_error
from .dataset.manifest import ManifestRow
from .errors import FatalError, TransientError
from .export import ExportLimits
from .openai_wire import AZURE_CHAT_URL, CHAT_URL, batch_line, dumps_line, parse_batch_output_line
from .runner import Progress, RunSummary, run_items
from .store import Store

if TYPE_CHECKING:
    from .classify import ClassifyOptions

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
GONE = {"failed", "expired", "cancelled"}
KIND = "batch"
INPUT_DIR = "batch-input"


def is_fine_tuned(name: str) -> bool:
    """OpenAI `ft:...` ids and Azure's `<base>.ft-<hex>` model names."""
    return name.startswith("ft:") or ".ft-" in name


@dataclass
class Part:
    """One Batch input file on disk."""

    path: Path
    ids: list[str] = field(default_factory=list)
    bytes: int = 0
    sha256: str = ""

    @property
    def key(self) -> str:
        return self.sha256[:24]


def write_parts(
    lines: Iterable[tuple[str, bytes]], folder: Path, limits: ExportLimits
) -> list[Part]:
    """Stream `(custom_id, line)` pairs into numbered files within the line and byte limits."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.jsonl"):
        old.unlink()
    parts: list[Part] = []
    handles: list[BinaryIO] = []
    digests: list[Any] = []
    try:
        for cid, line in lines:
            if len(line) > limits.max_batch_bytes:
                raise FatalError(
                    f"the request for {cid} alone is over the Batch file limit of "
                    f"{limits.max_batch_bytes:,} bytes: use --mode realtime"
                )
            if (
                not parts
                or len(parts[-1].ids) >= limits.max_batch_lines
                or parts[-1].bytes + len(line) > limits.max_batch_bytes
            ):
                if handles:
                    handles[-1].close()
                parts.append(Part(folder / f"part-{len(parts) + 1:03d}.jsonl"))
                handles.append(parts[-1].path.open("wb"))
                digests.append(hashlib.sha256())
            handles[-1].write(line)
            digests[-1].update(line)
            parts[-1].ids.append(cid)
            parts[-1].bytes += len(line)
    finally:
        for h in handles:
            h.close()
    for part, digest in zip(parts, digests, strict=True):
        part.sha256 = digest.hexdigest()
    return parts


@dataclass
class _BatchRun:
    """One `classify --mode batch` call."""

    backend: OpenAIChatBackend
    store: Store
    arm: str
    options: ClassifyOptions
    progress: Progress
    on_progress: Callable[[Progress], None] | None
    say: Callable[[str], None]

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self.backend.client

    def tick(self, n: int = 1) -> None:
        self.progress.done += n
        if self.on_progress:
            self.on_progress(self.progress)

    async def collect_stored(self, by_id: dict[str, ManifestRow]) -> None:
        """Record what finished batches of an earlier run already answered (a crash while
        recording their output must not lead to paying for the same lines again)."""
        for obj in self.store.remotes(self.arm, KIND):
            if obj.status != "completed" or not by_id:
                continue
            try:
                batch = await self.client.batches.retrieve(obj.remote_id)
            except openai.NotFoundError:
                continue
            answered = await self.collect(batch, by_id)
            for cid in answered:
                by_id.pop(cid, None)
            if answered:
                self.say(f"collected {len(answered)} answer(s) from finished batch {batch.id}")

    async def submit(self, part: Part, n: int, total: int, url: str) -> Any:
        """The batch for this exact input: re-attached from the store or the service, else created."""
        where = f"part {n}/{total}"
        known = self.store.remote(self.arm, KIND, part.key)
        if known:
            try:
                batch = await self.client.batches.retrieve(known.remote_id)
            except openai.NotFoundError:
                self.say(
                    f"{where}: batch {known.remote_id} is unknown to this server: sending it again"
                )
                self.store.forget_remote(self.arm, "batch_input_file", f"file-{part.key}")
            else:
                self.say(f"{where}: re-attached to batch {batch.id} ({batch.status})")
                return batch
        async for existing in await self.client.batches.list(limit=100):
            meta = existing.metadata or {}
            if meta.get("vlm_classify_input") == part.key and existing.status not in GONE:
                self.store.put_remote(self.arm, KIND, part.key, existing.id, existing.status)
                self.say(f"{where}: found batch {existing.id} for this input ({existing.status})")
                return existing
        file_key = f"file-{part.key}"
        uploaded = self.store.remote(self.arm, "batch_input_file", file_key)
        if uploaded:
            file_id = uploaded.remote_id
        else:
            self.say(f"{where}: uploading {part.bytes / 1e6:.1f} MB ({len(part.ids)} requests)")
            with part.path.open("rb") as fh:
                f = await self.client.files.create(file=(part.path.name, fh), purpose="batch")
            file_id = f.id
            self.store.put_remote(self.arm, "batch_input_file", file_key, file_id)
        azure = self.backend.ref.provider == "azure"
        try:
            batch = await self.client.batches.create(
                input_file_id=file_id,
                endpoint=url if azure else CHAT_URL,  # type: ignore[arg-type]
                completion_window="24h",
                metadata={"vlm_classify_arm": self.arm[:64], "vlm_classify_input": part.key},
            )
        except openai.BadRequestError as e:
            self.say(
                f"{where}: the Batch API refused it ({translate_error(e)}): running it realtime instead"
            )
            return None
        self.store.put_remote(
            self.arm, KIND, part.key, batch.id, batch.status, input_file_id=file_id
        )
        self.say(f"{where}: created batch {batch.id}")
        return batch

    async def follow(self, key: str, batch: Any) -> Any:
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
                    f" {counts.completed}/{counts.total} done, {counts.failed} failed"
                    if counts
                    else ""
                )
                self.say(f"batch {batch.id}: {batch.status}{done}")
                self.store.put_remote(self.arm, KIND, key, batch.id, batch.status)
                last = state
            if batch.status in TERMINAL:
                return batch
            await asyncio.sleep(self.options.batch_poll_s)
            try:
                batch = await self.client.batches.retrieve(batch.id)
            except openai.OpenAIError as e:
                err = translate_error(e)
                if not isinstance(err, TransientError):
                    raise err from None
                log.info("polling %s failed (%s); trying again", batch.id, err)

    async def collect(self, batch: Any, by_id: dict[str, ManifestRow]) -> set[str]:
        """Record every successful line of the output file for items in `by_id`; return their ids."""
        answered: set[str] = set()
        if not batch.output_file_id:
            return answered
        text = (await self.client.files.content(batch.output_file_id)).text
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                outcome = parse_batch_output_line(raw)
                item = by_id.get(outcome.custom_id)
                if item is None or outcome.status_code != 200 or item.id in answered:
                    continue
                p = prediction_from_response(
                    outcome.payload, self.backend.labels, self.backend.settings.answer
                )
            except ValueError:  # an unreadable line counts as failed and is retried
                log.warning("an unreadable line in %s", batch.output_file_id)
                continue
            self.store.record(self.arm, item.id, item.label, p, attempts=1, mode="batch")
            answered.add(item.id)
            self.tick()
        return answered

    async def record_failures(self, batch: Any, missing: set[str]) -> None:
        """Keep each failed line's error (from the error file, else 'no output') before retrying it."""
        if not missing:
            return
        reasons: dict[str, str] = {}
        if batch.error_file_id:
            text = (await self.client.files.content(batch.error_file_id)).text
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
            self.store.put_remote(
                self.arm, "batch_failed_line", cid, batch.id, status="retried", reason=reason
            )


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
    finished = store.finished_ids(arm)
    todo = [it for it in items if it.id not in finished]
    progress = Progress(
        total=len(items), done=len(items) - len(todo), skipped=len(items) - len(todo)
    )
    run = _BatchRun(
        backend, store, arm, options, progress, on_progress, on_status or (lambda _m: None)
    )
    run.tick(0)
    ref = backend.ref
    failed: set[str] = set()
    try:
        if ref.provider == "azure" and is_fine_tuned(ref.name):
            run.say(
                "Azure OpenAI does not run batches on fine-tuned deployments: running realtime instead"
            )
            failed = {it.id for it in todo}
        elif todo:
            await backend.detect_emulator()
            by_id = {it.id: it for it in todo}
            await run.collect_stored(by_id)
            url = AZURE_CHAT_URL if ref.provider == "azure" else CHAT_URL
            lines = (
                (
                    it.id,
                    dumps_line(batch_line(it.id, backend.body(it, keep_image=False), url)).encode(),
                )
                for it in by_id.values()
            )
            parts = write_parts(
                lines, arm_dir(backend.images.root, arm) / INPUT_DIR, limits or ExportLimits()
            )
            sent = []
            for n, part in enumerate(parts, start=1):
                batch = await run.submit(part, n, len(parts), url)
                if batch is None:  # refused: these go realtime
                    failed.update(part.ids)
                else:
                    sent.append((part, batch))
            for part, batch in sent:
                batch = await run.follow(part.key, batch)
                missing = set(part.ids) - await run.collect(batch, by_id)
                await run.record_failures(batch, missing)
                failed |= missing
    except openai.OpenAIError as e:
        raise translate_error(e, ref) from None
    errors = retries = 0
    try:
        if failed:
            if todo and len(failed) < len(todo):
                run.say(f"{len(failed)} line(s) failed in the batch: retrying them realtime")
            rest = [it for it in todo if it.id in failed]
            sub = await run_items(backend, rest, store, arm, "realtime", options.runner)
            errors, retries = sub.errors, sub.retries
            run.tick(len(rest))
    finally:
        await backend.aclose()
    batch_failed = len(failed) if not (ref.provider == "azure" and is_fine_tuned(ref.name)) else 0
    return RunSummary(
        requested=len(todo),
        completed=len(todo),
        errors=errors,
        retries=retries + batch_failed,
        skipped=progress.skipped,
        wall_s=time.perf_counter() - start,
        error_kinds={"batch_line_failed": batch_failed} if batch_failed else {},
    )
