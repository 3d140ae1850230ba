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
from typing import Any, BinaryIO

import openai

from ...arms import arm_dir
from ...dataset.manifest import ManifestRow
from ...errors import FatalError, TransientError
from ...models import is_fine_tuned_name
from ...runner import Progress, RunnerConfig, RunSummary, first_contact, run_items
from ...store import Store
from .chat import OpenAIChatBackend, prediction_from_response, translate_error
from .export import ExportLimits
from .wire import AZURE_CHAT_URL, CHAT_URL, batch_line, dumps_line, parse_batch_output_line

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
GONE = {"failed", "expired", "cancelled"}
KIND = "batch"
FAILED_LINE = "batch_failed_line"
"""Remote-object rows of failed lines: status `retrying`, then `retried_answered` or
`retried_failed` once asked again realtime."""
INPUT_DIR = "batch-input"


BATCH_REMOTE_KINDS = (KIND, "batch_input_file", FAILED_LINE)
"""What a run stores of the Batch API (discarded with the arm's answers by `classify --reset`)."""


@dataclass(frozen=True)
class BatchSettings:
    """How a Batch run goes."""

    runner: RunnerConfig
    """For the realtime requests: failed lines, and models that cannot run in batch."""
    poll_s: float = 10.0
    """Seconds between Batch status checks."""
    fine_tuned: bool = False
    """The model is known to be fine-tuned (a fine-tune record names it): on Azure it cannot run
    in batch, whatever its deployment is called."""


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
    options: BatchSettings
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
            await asyncio.sleep(self.options.poll_s)
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
                self.arm, FAILED_LINE, cid, batch.id, status="retrying", reason=reason
            )

    def record_retried(self, ids: Iterable[str]) -> None:
        """After the realtime retry, mark each failed line `retried_answered` or, when its item
        is still recorded with an error, `retried_failed` (only those count as errors)."""
        still_failing = self.store.failed_ids(self.arm)
        for cid in ids:
            known = self.store.remote(self.arm, FAILED_LINE, cid)
            if known is None:
                continue
            status = "retried_failed" if cid in still_failing else "retried_answered"
            self.store.put_remote(
                self.arm, FAILED_LINE, cid, known.remote_id, status=status, **known.data
            )


async def run_batch(
    backend: OpenAIChatBackend,
    items: list[ManifestRow],
    store: Store,
    arm: str,
    options: BatchSettings,
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
    try:  # the client is closed however the run ends
        return await _run_batch(run, backend, todo, store, arm, options, limits, start)
    finally:
        await backend.aclose()


async def _run_batch(
    run: _BatchRun,
    backend: OpenAIChatBackend,
    todo: list[ManifestRow],
    store: Store,
    arm: str,
    options: BatchSettings,
    limits: ExportLimits | None,
    start: float,
) -> RunSummary:
    ref = backend.ref
    failed: set[str] = set()
    azure_ft = False  # no Batch at all: every item goes realtime
    try:
        if ref.provider == "azure" and (options.fine_tuned or is_fine_tuned_name(ref.name)):
            azure_ft = True
            run.say(
                f"{ref} is a fine-tuned deployment, and Azure OpenAI does not run batches on "
                "fine-tuned deployments: running realtime instead (nothing is uploaded)"
            )
            failed = {it.id for it in todo}
            run.tick(0)
        elif not todo:
            run.tick(0)
        else:
            # A service that cannot be reached stops the run here, after a short wait (and
            # before any progress is shown, so that its one line is all there is).
            await first_contact(backend.detect_emulator, options.runner)
            run.tick(0)
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
        raise backend.translate(e) from None
    sub = None
    if failed:
        if todo and len(failed) < len(todo):
            run.say(f"{len(failed)} line(s) failed in the batch: retrying them realtime")
        rest = [it for it in todo if it.id in failed]
        sub = await run_items(
            backend,
            rest,
            store,
            arm,
            "realtime",
            options.runner,
            token_estimate=backend.estimate_tokens,
            reached=not azure_ft,  # the Batch calls reached the service
        )
        run.tick(len(rest))
        if not azure_ft:
            run.record_retried(failed)
    return RunSummary(
        requested=len(todo),
        completed=len(todo) - len(failed) + (sub.completed if sub else 0),
        errors=sub.errors if sub else 0,
        retries=sub.retries if sub else 0,
        skipped=run.progress.skipped,
        wall_s=time.perf_counter() - start,
        error_kinds=sub.error_kinds if sub else {},
        batch_lines_retried=0 if azure_ft else len(failed),
    )
