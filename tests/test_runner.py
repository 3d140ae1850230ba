"""The runner against a scripted backend: a test double of the one-method Backend interface."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from vlm_classify.backends.base import Prediction, Usage
from vlm_classify.dataset.manifest import ManifestRow, read_manifest
from vlm_classify.errors import FatalError, ItemError, TransientError, UnreachableError
from vlm_classify.runner import Progress, RunnerConfig, run_items
from vlm_classify.store import Store

FAST = RunnerConfig(concurrency=4, max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.01)


class Scripted:
    """Answers each item with its label after failing as scripted: a list of exceptions per id."""

    name = "scripted"

    def __init__(
        self, failures: dict[str, list[Exception]] | None = None, delay: float = 0.0
    ) -> None:
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.calls: dict[str, int] = {}
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.released: list[str] = []

    async def classify(self, item: ManifestRow) -> Prediction:
        self.calls[item.id] = self.calls.get(item.id, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            queue = self.failures.get(item.id)
            if queue:
                raise queue.pop(0)
            return Prediction(item.label, item.label, True, usage=Usage(10, 2), latency_ms=1.0)
        finally:
            self.in_flight -= 1

    def release(self, item: ManifestRow) -> None:
        self.released.append(item.id)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def items(small_prepared: Path) -> list[ManifestRow]:
    return read_manifest(small_prepared)


def test_every_item_is_answered_once_and_persisted(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    backend = Scripted(delay=0.01)
    seen: list[Progress] = []
    with Store(tmp_path / "runs.sqlite") as store:
        summary = asyncio.run(
            run_items(backend, items, store, "arm", "realtime", FAST, seen.append)
        )
        assert summary.completed == len(items) and summary.errors == 0
        assert set(backend.calls) == {i.id for i in items}
        assert all(n == 1 for n in backend.calls.values())
        assert backend.max_in_flight == FAST.concurrency
        assert len(store.predictions("arm")) == len(items)
        assert seen[-1].done == len(items)


def test_transient_failures_are_retried_and_counted(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    first, second = items[0].id, items[1].id
    backend = Scripted(
        {first: [TransientError("429"), TransientError("500")], second: [ItemError("refused")]}
    )
    with Store(tmp_path / "runs.sqlite") as store:
        summary = asyncio.run(run_items(backend, items, store, "arm", "realtime", FAST))
        rows = {r.item_id: r for r in store.predictions("arm")}
    assert backend.calls[first] == 3 and rows[first].attempts == 3 and rows[first].correct
    assert backend.calls[second] == 1 and rows[second].result.error == "refused"
    assert summary.retries == 2 and summary.errors == 1
    assert summary.completed == len(items) - 1  # answered, not merely asked
    # every item is released once it is final, the failed one included
    assert sorted(backend.released) == sorted(i.id for i in items)


def test_exhausted_retries_are_recorded_as_errors(tmp_path: Path, items: list[ManifestRow]) -> None:
    target = items[0].id
    backend = Scripted({target: [TransientError("503")] * 10})
    with Store(tmp_path / "runs.sqlite") as store:
        asyncio.run(run_items(backend, items[:3], store, "arm", "realtime", FAST))
        row = next(r for r in store.predictions("arm") if r.item_id == target)
    assert row.attempts == FAST.max_attempts and row.result.error == "503" and not row.result.valid


def test_retry_after_is_honoured(tmp_path: Path, items: list[ManifestRow]) -> None:
    target = items[0].id
    backend = Scripted({target: [TransientError("429", retry_after=0.3)]})
    start = time.perf_counter()
    with Store(tmp_path / "runs.sqlite") as store:
        asyncio.run(run_items(backend, items[:1], store, "arm", "realtime", FAST))
    assert time.perf_counter() - start >= 0.3


def test_a_rerun_asks_only_for_what_is_missing(tmp_path: Path, items: list[ManifestRow]) -> None:
    with Store(tmp_path / "runs.sqlite") as store:
        asyncio.run(run_items(Scripted(), items[:5], store, "arm", "realtime", FAST))
        again = Scripted()
        summary = asyncio.run(run_items(again, items, store, "arm", "realtime", FAST))
    assert summary.skipped == 5
    assert set(again.calls) == {i.id for i in items[5:]}


def test_a_fatal_error_stops_the_run(tmp_path: Path, items: list[ManifestRow]) -> None:
    backend = Scripted({i.id: [FatalError("bad key")] for i in items})
    with Store(tmp_path / "runs.sqlite") as store, pytest.raises(FatalError, match="bad key"):
        asyncio.run(run_items(backend, items, store, "arm", "realtime", FAST))


def test_timeouts_are_transient(tmp_path: Path, items: list[ManifestRow]) -> None:
    cfg = FAST.model_copy(update={"request_timeout_s": 0.05, "max_attempts": 2})
    with Store(tmp_path / "runs.sqlite") as store:
        asyncio.run(run_items(Scripted(delay=1.0), items[:2], store, "arm", "realtime", cfg))
        rows = store.predictions("arm")
    assert all("no answer within" in (r.result.error or "") and r.attempts == 2 for r in rows)


def test_a_tpm_cap_needs_a_token_estimate(tmp_path: Path, items: list[ManifestRow]) -> None:
    cfg = FAST.model_copy(update={"tpm": 1000.0})
    with Store(tmp_path / "runs.sqlite") as store, pytest.raises(ValueError, match="tpm"):
        asyncio.run(run_items(Scripted(), items, store, "arm", "realtime", cfg))


# --- a service that cannot be reached -------------------------------------------------------


def _unreachable() -> TransientError:
    return TransientError(
        "cannot reach http://127.0.0.1:9/v1/ (connection refused)",
        unreachable=UnreachableError("cannot reach http://127.0.0.1:9/v1/ (connection refused)"),
    )


def test_an_unreachable_service_stops_after_the_short_wait(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    cfg = FAST.model_copy(update={"max_attempts": 1000, "unreachable_wait_s": 0.3})
    backend = Scripted({i.id: [_unreachable() for _ in range(1000)] for i in items})
    start = time.perf_counter()
    with Store(tmp_path / "runs.sqlite") as store:
        with pytest.raises(UnreachableError, match="connection refused"):
            asyncio.run(run_items(backend, items, store, "arm", "realtime", cfg))
        assert store.predictions("arm") == []  # nothing recorded: the next run asks again
    assert 0.3 <= time.perf_counter() - start < 1.5
    assert sum(backend.calls.values()) < 200  # a few tries per item, not a thousand


def test_an_unreachable_service_stops_when_attempts_run_out_first(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    cfg = FAST.model_copy(update={"max_attempts": 2, "unreachable_wait_s": 30})
    backend = Scripted({i.id: [_unreachable(), _unreachable()] for i in items})
    with Store(tmp_path / "runs.sqlite") as store:
        with pytest.raises(UnreachableError):
            asyncio.run(run_items(backend, items, store, "arm", "realtime", cfg))
        assert store.predictions("arm") == []


def test_once_the_service_answered_connection_failures_are_ordinary(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    cfg = FAST.model_copy(update={"concurrency": 1, "max_attempts": 3, "unreachable_wait_s": 0})
    first, flaky, dead = items[0].id, items[1].id, items[2].id
    backend = Scripted({flaky: [_unreachable(), _unreachable()], dead: [_unreachable()] * 3})
    with Store(tmp_path / "runs.sqlite") as store:
        summary = asyncio.run(run_items(backend, items[:3], store, "arm", "realtime", cfg))
        rows = {r.item_id: r for r in store.predictions("arm")}
    assert rows[first].correct and rows[flaky].correct and rows[flaky].attempts == 3
    assert "cannot reach" in (rows[dead].result.error or "")  # recorded, as any exhausted retry
    assert (summary.completed, summary.errors) == (2, 1)


def test_a_batch_run_that_reached_the_service_retries_as_usual(
    tmp_path: Path, items: list[ManifestRow]
) -> None:
    cfg = FAST.model_copy(update={"max_attempts": 3, "unreachable_wait_s": 0})
    backend = Scripted({items[0].id: [_unreachable(), _unreachable()]})
    with Store(tmp_path / "runs.sqlite") as store:
        summary = asyncio.run(
            run_items(backend, items[:1], store, "arm", "realtime", cfg, reached=True)
        )
    assert summary.completed == 1 and backend.calls[items[0].id] == 3
