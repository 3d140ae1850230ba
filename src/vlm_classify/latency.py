"""The latency study: the original method (one timed SDK call per request, up to 3 attempts with
linear backoff, failures counted apart) at several concurrency levels, and the summary statistics
that reproduce the study's table from any per-request CSV.
"""

from __future__ import annotations

import asyncio
import csv
import json
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
from pydantic import BaseModel, Field

from . import __version__
from .arms import arm_dir, check_arm_name
from .backends.openai.chat import (
    ChatSettings,
    OpenAIChatBackend,
    ServerSupport,
    adapt_settings,
    check_server,
    make_client,
    parse_openai_model,
    public_address,
)
from .backends.openai.wire import AnswerMode, Detail
from .dataset.manifest import ManifestRow, Split, load_split
from .errors import FatalError, ItemError, TransientError, UserError
from .files import atomic_open, write_text_atomic
from .prompts import PromptStyle
from .runner import RunnerConfig

SAMPLES_NAME = "latency-samples.csv"
SUMMARY_NAME = "latency.csv"
META_NAME = "latency.json"
SAMPLE_FIELDS = ["model", "concurrency", "id", "label", "latency_ms", "error", "attempts"]
STAT_FIELDS = [
    "total_requests",
    "success_count",
    "error_count",
    "mean_ms",
    "median_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "min_ms",
    "max_ms",
    "std_dev_ms",
    "throughput_rps_est",
]
"""The study's columns (latency_summary.csv), after `model` and `deployment`."""
LEVEL_FIELDS = [
    "model",
    "concurrency",
    *STAT_FIELDS,
    "throughput_rps_measured",
    "wall_s",
    "emulated",
]
"""The columns of `DIR/arms/ARM/latency.csv`: one row per concurrency level."""


def latency_stats(latencies_ms: Sequence[float], errors: int = 0) -> dict[str, Any]:
    """The study's statistics, rounded as it rounded them (ms to 0.01, throughput to 0.001).

    Percentiles are numpy's linear interpolation, the standard deviation is the population one,
    and `throughput_rps_est` is 1000 / mean: the rate of one client sending requests in sequence.
    """
    x = np.asarray(latencies_ms, dtype=float)
    out: dict[str, Any] = {
        "total_requests": len(x) + errors,
        "success_count": len(x),
        "error_count": errors,
    }
    if len(x) == 0:
        return out | {k: None for k in STAT_FIELDS[3:]}
    p50, p90, p95, p99 = (float(v) for v in np.percentile(x, [50, 90, 95, 99]))
    mean = float(x.mean())
    return out | {
        "mean_ms": round(mean, 2),
        "median_ms": round(p50, 2),
        "p50_ms": round(p50, 2),
        "p90_ms": round(p90, 2),
        "p95_ms": round(p95, 2),
        "p99_ms": round(p99, 2),
        "min_ms": round(float(x.min()), 2),
        "max_ms": round(float(x.max()), 2),
        "std_dev_ms": round(float(x.std()), 2),
        "throughput_rps_est": round(1000.0 / mean, 3) if mean > 0 else None,
    }


def summarize_rows(
    rows: Iterable[dict[str, str]], trim_first: int = 0, group: Sequence[str] = ("model",)
) -> list[dict[str, Any]]:
    """Summarise per-request rows (`latency_ms`, `error`) grouped by the `group` columns, in
    order of first appearance. `trim_first` drops each group's first N requests (the warm-up).
    """
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(g) or "" for g in group), []).append(row)
    out = []
    for key, members in groups.items():
        ok: list[float] = []
        errors = 0
        for row in members[trim_first:]:
            if (row.get("error") or "").strip():
                errors += 1
                continue
            try:
                ok.append(float(row["latency_ms"]))
            except (TypeError, ValueError):
                errors += 1
        out.append(dict(zip(group, key, strict=True)) | latency_stats(ok, errors))
    return out


def summarize_csv(path: Path, trim_first: int = 0) -> list[dict[str, Any]]:
    """Summarise a per-request CSV (columns `model`, `latency_ms`, `error`; `deployment` and
    `concurrency` are kept when present), one row per model (and deployment, concurrency)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-csv: {path} not found; pass a per-request latency CSV")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("model", "latency_ms") if c not in fields]
        if missing:
            raise UserError(
                f"--from-csv: {path} lacks column(s) {', '.join(missing)} "
                f"(it has {', '.join(fields) or 'none'}); columns: model, latency_ms, error"
            )
        group = ["model"] + [c for c in ("deployment", "concurrency") if c in fields]
        return summarize_rows(list(reader), trim_first=trim_first, group=group)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """Write rows with `\\n` line ends; None becomes an empty cell."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if row.get(k) is None else row[k] for k in fields})


# --- measuring -------------------------------------------------------------------------------


class LatencyOptions(BaseModel):
    """One latency study: a model, the levels of concurrency, how many requests at each."""

    model: str
    """`PROVIDER/MODEL`: `openai/gpt-4o-2024-08-06`, `azure/<deployment>`."""
    name: str
    """The arm whose folder receives latency.csv and latency-samples.csv."""
    requests: int = Field(600, ge=1)
    """Requests per concurrency level, cycling through the split's images."""
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])
    """Requests in flight at once; one level after the other."""
    split: Split = "test"
    max_attempts: int = Field(3, ge=1)
    """Tries per request, as in the study (up to 3)."""
    backoff_s: float = Field(1.0, ge=0)
    """Linear backoff: wait `backoff_s x attempt` before the next try."""
    timeout_s: float = Field(60.0, gt=0)
    prompt: PromptStyle = "full"
    detail: Detail = "low"
    answer: AnswerMode = "enum"


@dataclass
class Sample:
    """One request's outcome."""

    concurrency: int
    item: ManifestRow
    latency_ms: float | None
    """Rounded to 0.01 ms."""
    error: str
    attempts: int


@dataclass
class LatencyProgress:
    concurrency: int
    total: int
    done: int = 0
    errors: int = 0


class LatencyResult(BaseModel):
    arm_dir: Path
    levels: list[dict[str, Any]]
    emulated: bool
    server: dict[str, Any] | None = None
    """What a served model's server does with the answer schema and logprobs (None: not one)."""
    note: str | None = None
    """The line saying how the requests were changed for that server (None: they were not)."""


async def _timed(
    backend: OpenAIChatBackend, item: ManifestRow, concurrency: int, opts: LatencyOptions
) -> Sample:
    """The study's loop: time the SDK call; retry transient failures with linear backoff."""
    error = ""
    for attempt in range(1, opts.max_attempts + 1):
        try:
            pred = await asyncio.wait_for(backend.classify(item), opts.timeout_s)
            # Rounded to 0.01 ms as recorded (and as the study's data was), so the summary can
            # be recomputed exactly from latency-samples.csv.
            ms = None if pred.latency_ms is None else round(pred.latency_ms, 2)
            return Sample(concurrency, item, ms, "", attempt)
        except asyncio.TimeoutError:
            error = f"TransientError: no answer within {opts.timeout_s:g} s"
        except TransientError as e:
            error = f"TransientError: {e}"
        except ItemError as e:
            return Sample(concurrency, item, None, f"ItemError: {e}", attempt)
        if attempt < opts.max_attempts:
            await asyncio.sleep(opts.backoff_s * attempt)
    return Sample(concurrency, item, None, error, opts.max_attempts)


async def _level(
    backend: OpenAIChatBackend,
    items: Sequence[ManifestRow],
    concurrency: int,
    opts: LatencyOptions,
    on_progress: Callable[[LatencyProgress], None] | None,
) -> tuple[list[Sample], float]:
    queue = [items[i % len(items)] for i in range(opts.requests)]
    samples: list[Sample | None] = [None] * len(queue)
    progress = LatencyProgress(concurrency, len(queue))
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(queue):
            i = next_index
            next_index += 1
            s = samples[i] = await _timed(backend, queue[i], concurrency, opts)
            progress.done += 1
            progress.errors += bool(s.error)
            if on_progress:
                on_progress(progress)

    if on_progress:
        on_progress(progress)
    start = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(queue)))]
    try:
        await asyncio.gather(*tasks)
    except FatalError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [s for s in samples if s is not None], time.perf_counter() - start


async def _measure(
    backend: OpenAIChatBackend,
    items: Sequence[ManifestRow],
    opts: LatencyOptions,
    on_progress: Callable[[LatencyProgress], None] | None,
) -> tuple[ServerSupport | None, str | None, list[tuple[int, list[Sample], float]]]:
    """The levels, after asking a served model's server what it does with the answer schema: on
    one that does not enforce it, the requests ask for free text (timed as what they are)."""
    try:
        cfg = RunnerConfig(
            max_attempts=opts.max_attempts,
            initial_backoff_s=opts.backoff_s,
            request_timeout_s=opts.timeout_s,
        )
        support = await check_server(backend, cfg)
        address = public_address(str(backend.client.base_url))
        backend.settings, note = adapt_settings(backend.settings, support, address)
        levels = [
            (c, *(await _level(backend, items, c, opts, on_progress))) for c in opts.concurrency
        ]
        return support, note, levels
    finally:
        await backend.aclose()


def measure_latency(
    prepared_dir: Path,
    options: LatencyOptions,
    on_progress: Callable[[LatencyProgress], None] | None = None,
) -> LatencyResult:
    """Run the study and write `latency-samples.csv`, `latency.csv` and `latency.json` into the
    arm's folder (next to its predictions when the arm was also classified)."""
    prepared_dir = Path(prepared_dir)
    check_arm_name(options.name)
    if not options.concurrency or any(c < 1 for c in options.concurrency):
        raise UserError("--concurrency: give positive integers separated by commas, e.g. 1,4,16")
    ref = parse_openai_model(options.model)
    items, labels = load_split(prepared_dir, options.split)
    client = make_client(ref, timeout=options.timeout_s)
    settings = ChatSettings(
        prompt=options.prompt, detail=options.detail, answer=options.answer, logprobs=False
    )
    backend = OpenAIChatBackend(ref, labels, prepared_dir, settings, client=client)
    started = time.time()
    support, note, measured = asyncio.run(_measure(backend, items, options, on_progress))
    server = support.record() if support else None
    emulated = backend.emulated
    model = str(ref)
    sample_rows: list[dict[str, Any]] = []
    levels: list[dict[str, Any]] = []
    for concurrency, samples, wall_s in measured:
        ok = [s.latency_ms for s in samples if not s.error and s.latency_ms is not None]
        stats = latency_stats(ok, len(samples) - len(ok))
        levels.append(
            {"model": model, "concurrency": concurrency}
            | stats
            | {
                "throughput_rps_measured": round(len(ok) / wall_s, 3) if wall_s > 0 else None,
                "wall_s": round(wall_s, 3),
                "emulated": int(emulated),
            }
        )
        sample_rows += [
            {
                "model": model,
                "concurrency": concurrency,
                "id": s.item.id,
                "label": s.item.label,
                "latency_ms": "" if s.latency_ms is None else f"{s.latency_ms:.2f}",
                "error": s.error,
                "attempts": s.attempts,
            }
            for s in samples
        ]
    out = arm_dir(prepared_dir, options.name)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": options.name,
        "model": model,
        "emulated": emulated,
        # What the requests asked: `answer` is `text` where the server does not enforce enum.
        "options": options.model_dump(mode="json") | {"answer": backend.settings.answer},
        "server": server,
        "started_at": started,
        "levels": levels,
        "versions": {
            "vlm_classify": __version__,
            "openai": openai.__version__,
            "python": platform.python_version(),
        },
    }
    write_csv(out / SAMPLES_NAME, sample_rows, SAMPLE_FIELDS)
    write_text_atomic(out / META_NAME, json.dumps(meta, indent=2) + "\n")
    # latency.csv last: the report takes a folder holding it for a finished study.
    write_csv(out / SUMMARY_NAME, levels, LEVEL_FIELDS)
    return LatencyResult(arm_dir=out, levels=levels, emulated=emulated, server=server, note=note)


__all__ = [
    "LEVEL_FIELDS",
    "SAMPLE_FIELDS",
    "STAT_FIELDS",
    "LatencyOptions",
    "LatencyProgress",
    "LatencyResult",
    "latency_stats",
    "measure_latency",
    "summarize_csv",
    "summarize_rows",
    "write_csv",
]
