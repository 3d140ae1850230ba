"""Helpers for the emulator tests: request bodies, spec checks, waiting on batches and jobs."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlm_classify.backends.openai import spec
from vlm_classify.dataset.manifest import ManifestRow, read_labels, read_manifest
from vlm_classify.emulator.state import ChatArrival
from vlm_classify.prompts import answer_schema, system_prompt

MODEL = "gpt-4o-2024-08-06"


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def rows_and_labels(
    prepared: Path, split: str | None = None
) -> tuple[list[ManifestRow], list[str]]:
    rows = read_manifest(prepared)
    if split:
        rows = [r for r in rows if r.split == split]
    return rows, read_labels(prepared)


def messages_for(
    prepared: Path, row: ManifestRow, labels: list[str], detail: str = "low"
) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": system_prompt(labels)},
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": data_url(prepared / row.image_path), "detail": detail},
                }
            ],
        },
    ]


def chat_body(
    prepared: Path,
    row: ManifestRow,
    labels: list[str],
    model: str = MODEL,
    structured: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages_for(prepared, row, labels),
        "temperature": 0,
    }
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": answer_schema(labels)}
    body.update(extra)
    return body


def answer_label(content: str | None) -> str | None:
    """The label in a structured answer."""
    try:
        return json.loads(content or "")["label"]
    except (ValueError, KeyError, TypeError):
        return None


def assert_spec(schema: str, obj: Any) -> None:
    """The object as the SDK received it matches the published response schema."""
    data = obj.model_dump(exclude_unset=True) if hasattr(obj, "model_dump") else obj
    problems = spec.validate(schema, data)
    assert problems == [], problems


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    """Poll `fetch()` until `done(result)`; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def busiest_window(
    arrivals: list[ChatArrival],
    window: float,
    weight: Callable[[ChatArrival], float] = lambda a: 1,
) -> float:
    """The most `weight` (requests by default) the server saw arrive within any `window` seconds.

    Sliding windows `[t, t + window)` that start at an arrival cover every maximum."""
    times = [a.at for a in arrivals]
    best = 0.0
    for i, start in enumerate(times):
        best = max(best, sum(weight(a) for a in arrivals[i:] if a.at < start + window))
    return best


def gaps(arrivals: list[ChatArrival]) -> list[float]:
    """Seconds between consecutive arrivals."""
    return [b.at - a.at for a, b in itertools.pairwise(arrivals)]


def jsonl(objs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in objs).encode("utf-8")


def training_lines(
    prepared: Path, rows: list[ManifestRow], labels: list[str]
) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                *messages_for(prepared, r, labels),
                {"role": "assistant", "content": r.label},
            ]
        }
        for r in rows
    ]
