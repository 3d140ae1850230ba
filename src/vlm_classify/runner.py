"""Concurrency, retries, rate limits and resume: shared by every backend and written once.

The runner asks a `Backend` for one item at a time, with at most `concurrency` requests in flight
and at most `rpm` requests and `tpm` tokens in any minute, retries transient failures with
exponential backoff and jitter (honouring the service's `retry-after`), stops early when the
service cannot be reached at all, and persists every answer the moment it arrives, so a rerun only
asks for what is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .backends.base import Backend, LocalBackend, Prediction
from .dataset.manifest import ManifestRow
from .errors import ItemError, TransientError
from .limits import RateLimiter, Reachability
from .store import Store

T = TypeVar("T")


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
    """Client-side cap on requests in any minute (None: no cap); see `RateLimiter`."""
    tpm: float | None = Field(None, gt=0)
    """Client-side cap on tokens in any minute, counted per request by the backend's estimate
    (prompt tokens as `estimate` counts them, plus the completion tokens the request allows)."""
    rate_window_s: float = Field(60.0, gt=0)
    """The window `rpm` and `tpm` are counted in: a minute (shorter only in tests)."""
    rate_slack_s: float = Field(0.5, ge=0)
    """Added to that window for the varying time a request takes to reach the service, so the caps
    hold as the service counts them (by arrival)."""
    unreachable_wait_s: float = Field(10.0, ge=0)
    """How long to keep trying a service that cannot be reached at all (connection refused,
    unknown host, TLS failure) while nothing of this run has reached it; then the run stops."""


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
    """What one run did (`run_items`, or a Batch run)."""

    requested: int
    """Items asked for (those an earlier run had not finished)."""
    completed: int
    """Items that got an answer this run (valid or not)."""
    errors: int
    """Items recorded with an error this run."""
    retries: int
    """Realtime requests sent again after a transient failure."""
    skipped: int
    """Items an earlier run had finished."""
    wall_s: float
    error_kinds: dict[str, int] = field(default_factory=dict)
    """The errors recorded this run, by kind."""
    batch_lines_retried: int = 0
    """Batch lines that failed and were asked again realtime (their outcome is counted above)."""
    busy_s: float | None = None
    """A local run's time in the model (its images per second: `completed / busy_s`)."""


def _wait(cfg: RunnerConfig, reach: Reachability) -> Callable[[RetryCallState], float]:
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
        return reach.cap(exc, float(backoff(state)))

    return wait


def _retrying(cfg: RunnerConfig, reach: Reachability) -> AsyncRetrying:
    return AsyncRetrying(
        stop=stop_after_attempt(cfg.max_attempts),
        wait=_wait(cfg, reach),
        retry=retry_if_exception_type(TransientError),
        reraise=True,
    )


async def first_contact(call: Callable[[], Awaitable[T]], cfg: RunnerConfig) -> T:
    """A run's first call to the service (a Batch run's), under the fail-fast rule of
    `Reachability`: a service that cannot be reached is retried briefly, then the run stops."""
    reach = Reachability(cfg.unreachable_wait_s)
    try:
        async for tried in _retrying(cfg, reach):
            with tried:
                try:
                    result = await call()
                except TransientError as e:
                    reach.saw(e)
                    raise
    except TransientError as e:
        reach.give_up(e)
        raise
    return result


async def run_items(
    backend: Backend,
    items: Sequence[ManifestRow],
    store: Store,
    arm: str,
    mode: str,
    cfg: RunnerConfig,
    on_progress: Callable[[Progress], None] | None = None,
    token_estimate: Callable[[ManifestRow], int] | None = None,
    reached: bool = False,
) -> RunSummary:
    """Classify every item not yet finished for `arm`, persisting each answer as it arrives.

    `token_estimate` counts a request's tokens for the `tpm` cap (required with it). `reached`:
    the service already answered earlier in this run (a Batch run's realtime retries), so
    connection failures are ordinary retryable errors from the start.
    """
    if cfg.tpm and token_estimate is None:
        raise ValueError(
            "a tpm cap needs token_estimate, the backend's count of a request's tokens"
        )
    start = time.perf_counter()
    finished = store.finished_ids(arm)
    todo = [it for it in items if it.id not in finished]
    progress = Progress(
        total=len(items), done=len(items) - len(todo), skipped=len(items) - len(todo)
    )
    error_kinds: dict[str, int] = {}
    limiter = (
        RateLimiter(cfg.rpm, cfg.tpm, cfg.rate_window_s, cfg.rate_slack_s)
        if cfg.rpm or cfg.tpm
        else None
    )
    reach = Reachability(cfg.unreachable_wait_s, reached=reached)
    queue: asyncio.Queue[ManifestRow] = asyncio.Queue()
    for it in todo:
        queue.put_nowait(it)
    # The first report waits until the service is known to be there: a run that cannot reach
    # it ends with its one line, and nothing before it.
    announced = not todo or reached
    if on_progress and announced:
        on_progress(progress)

    def announce() -> None:
        nonlocal announced
        if not announced and reach.reached:
            announced = True
            if on_progress:
                on_progress(progress)

    async def attempt(item: ManifestRow, tokens: int) -> Prediction:
        if limiter:
            await limiter.acquire(tokens)
        try:
            result = await asyncio.wait_for(backend.classify(item), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            reach.saw(None)  # not a failure to connect: the fail-fast rule is over
            announce()
            raise TransientError(f"no answer within {cfg.request_timeout_s:g} s") from None
        except (TransientError, ItemError) as e:
            reach.saw(e)  # raises UnreachableError once the short wait is over
            announce()
            raise
        reach.saw(None)
        announce()
        return result

    async def one(item: ManifestRow) -> None:
        attempts = 0
        tokens = token_estimate(item) if cfg.tpm and token_estimate else 0
        try:
            async for tried in _retrying(cfg, reach):
                with tried:
                    attempts = tried.retry_state.attempt_number
                    if attempts > 1:
                        progress.retries += 1
                    result = await attempt(item, tokens)
        except (TransientError, ItemError) as e:
            reach.give_up(e)  # unreachable from the start: stop, recording nothing
            kind = type(e).__name__
            error_kinds[kind] = error_kinds.get(kind, 0) + 1
            result = Prediction(prediction=None, raw_answer="", valid=False, error=str(e))
            progress.errors += 1
        store.record(arm, item.id, item.label, result, attempts, mode)
        backend.release(item)
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
    except BaseException:  # a fatal error (or any other) in one worker stops them all
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return RunSummary(
        requested=len(todo),
        completed=progress.done - progress.skipped - progress.errors,
        errors=progress.errors,
        retries=progress.retries,
        skipped=progress.skipped,
        wall_s=time.perf_counter() - start,
        error_kinds=error_kinds,
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (children not counted)."""
    import resource  # POSIX only; imported here so that Windows can still import the runner

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def run_local(
    backend: LocalBackend,
    items: Sequence[ManifestRow],
    store: Store,
    arm: str,
    batch_size: int,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Classify every item not yet finished for `arm` with a local model, a batch at a time.

    Each batch is persisted in one transaction as it comes back, so an interrupted run resumes
    at the first unfinished batch. No retries: a local failure (a bad image, out of memory) is
    not transient, so it stops the run with its message. `latency_ms` of each item is its
    batch's wall time divided by the batch's size: the model's time per image, not a request's.
    """
    start = time.perf_counter()
    finished = store.finished_ids(arm)
    todo = [it for it in items if it.id not in finished]
    progress = Progress(
        total=len(items), done=len(items) - len(todo), skipped=len(items) - len(todo)
    )
    if on_progress:
        on_progress(progress)
    busy = 0.0
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        t0 = time.perf_counter()
        predictions = backend.classify_batch(batch)
        elapsed = time.perf_counter() - t0
        busy += elapsed
        if len(predictions) != len(batch):
            raise RuntimeError(f"{backend.name} gave {len(predictions)} answers for {len(batch)}")
        per_image_ms = elapsed * 1000 / len(batch)
        store.record_many(
            arm,
            [
                (it.id, it.label, dataclasses.replace(p, latency_ms=per_image_ms))
                for it, p in zip(batch, predictions, strict=True)
            ],
            attempts=1,
            mode="local",
        )
        progress.done += len(batch)
        if on_progress:
            on_progress(progress)
    return RunSummary(
        requested=len(todo),
        completed=len(todo),
        errors=0,
        retries=0,
        skipped=progress.skipped,
        wall_s=time.perf_counter() - start,
        busy_s=busy,
    )
