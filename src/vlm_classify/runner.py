"""Concurrency, retries, rate limits and resume: shared by every backend and written once.

The runner asks a `Backend` for one item at a time, with at most `concurrency` requests in flight,
retries transient failures with exponential backoff and jitter (honouring the service's
`retry-after`), and persists every answer the moment it arrives, so a rerun only asks for what is
missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .backends.base import Backend, Prediction
from .dataset.manifest import ManifestRow
from .errors import FatalError, ItemError, TransientError
from .store import Store

log = logging.getLogger(__name__)


class RunnerConfig(BaseModel):
    """How requests are sent; saved with every run."""

    concurrency: int = Field(8, ge=1, le=1024)
    """Requests in flight at once."""
    max_attempts: int = Field(10, ge=1)
    """Tries per item, the first included, before it is recorded as an error."""
    initial_backoff_s: float = Field(0.5, ge=0)
    """First retry delay; doubles each retry (with jitter) up to `max_backoff_s`."""
    max_backoff_s: float = Field(30.0, ge=0)
    request_timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout: a request that takes longer is retried."""
    rpm: float | None = Field(None, gt=0)
    """Client-side cap on requests per minute (None: no cap)."""
    tpm: float | None = Field(None, gt=0)
    """Client-side cap on tokens per minute, using each request's estimated prompt tokens."""


@dataclass
class Progress:
    """Counts reported to a progress callback after each item."""

    total: int
    done: int = 0
    errors: int = 0
    retries: int = 0
    skipped: int = 0
    """Items already finished by an earlier run."""


@dataclass
class RunSummary:
    """What one `run_items` call did."""

    requested: int
    completed: int
    errors: int
    retries: int
    skipped: int
    wall_s: float
    error_kinds: dict[str, int] = field(default_factory=dict)


def _wait(cfg: RunnerConfig) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(
        multiplier=cfg.initial_backoff_s, max=cfg.max_backoff_s, jitter=cfg.initial_backoff_s
    )

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # Like the openai SDK: trust a reasonable retry-after, else back off exponentially.
        if (
            isinstance(exc, TransientError)
            and exc.retry_after is not None
            and 0 <= exc.retry_after <= 60
        ):
            return exc.retry_after
        return float(backoff(state))

    return wait


async def run_items(
    backend: Backend,
    items: Sequence[ManifestRow],
    store: Store,
    arm: str,
    mode: str,
    cfg: RunnerConfig,
    on_progress: Callable[[Progress], None] | None = None,
    token_estimate: Callable[[ManifestRow], int] | None = None,
) -> RunSummary:
    """Classify every item not yet finished for `arm`, persisting each answer as it arrives."""
    start = time.perf_counter()
    finished = store.finished_ids(arm)
    todo = [it for it in items if it.id not in finished]
    progress = Progress(
        total=len(items), done=len(items) - len(todo), skipped=len(items) - len(todo)
    )
    error_kinds: dict[str, int] = {}
    # Smooth rates: a second's worth of requests (6 s of tokens) at most in one burst.
    rpm = AsyncLimiter(max(cfg.rpm / 60, 1.0), 1) if cfg.rpm else None
    tpm = AsyncLimiter(max(cfg.tpm / 10, 1.0), 6) if cfg.tpm else None
    queue: asyncio.Queue[ManifestRow] = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)
    if on_progress:
        on_progress(progress)

    async def attempt(item: ManifestRow) -> Prediction:
        if rpm:
            await rpm.acquire()
        if tpm and token_estimate:
            await tpm.acquire(min(token_estimate(item), tpm.max_rate))
        try:
            return await asyncio.wait_for(backend.classify(item), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            raise TransientError(f"no answer within {cfg.request_timeout_s:g} s") from None

    async def one(item: ManifestRow) -> None:
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_attempts),
            wait=_wait(cfg),
            retry=retry_if_exception_type(TransientError),
            reraise=True,
        )
        try:
            async for tried in retrying:
                with tried:
                    attempts = tried.retry_state.attempt_number
                    if attempts > 1:
                        progress.retries += 1
                    result = await attempt(item)
        except (TransientError, ItemError) as e:
            kind = type(e).__name__
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
            result = Prediction(prediction=None, raw_answer="", valid=False, error=str(e))
            progress.errors += 1
        store.record(arm, item.id, item.label, result, attempts, mode)
        progress.done += 1
        if on_progress:
            on_progress(progress)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(item)

    workers = [asyncio.create_task(worker()) for _ in range(min(cfg.concurrency, len(todo)) or 0)]
    try:
        await asyncio.gather(*workers)
    except FatalError:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return RunSummary(
        requested=len(todo),
        completed=len(todo),
        errors=progress.errors,
        retries=progress.retries,
        skipped=progress.skipped,
        wall_s=time.perf_counter() - start,
        error_kinds=error_kinds,
    )
