"""`classify`: run one arm (a model over a split) realtime or through the Batch API, resumably."""

from __future__ import annotations

import asyncio
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import openai
from pydantic import BaseModel, Field

from . import __version__
from .arms import arm_dir, check_arm_name, write_arm_files
from .backends.openai import ChatSettings, OpenAIChatBackend, make_client, parse_openai_model
from .dataset.manifest import Split, load_split
from .errors import UserError
from .finetune import find_fine_tune
from .openai_wire import AnswerMode, Detail
from .prompts import PromptStyle
from .runner import Progress, RunnerConfig, RunSummary, run_items
from .store import Store

Mode = Literal["realtime", "batch"]


class ClassifyOptions(BaseModel):
    """Everything one arm's run depends on; saved in the store and in arm.json."""

    model: str
    """`PROVIDER/MODEL`: `openai/gpt-4o-2024-08-06`, `azure/<deployment>`."""
    name: str
    """The arm's name: its folder under `DIR/arms/` and its column in the report."""
    split: Split = "test"
    mode: Mode = "realtime"
    prompt: PromptStyle = "full"
    detail: Detail = "low"
    answer: AnswerMode = "enum"
    """`enum`: structured output constrained to the labels; `text`: free text, parsed."""
    logprobs: bool = True
    """Ask for log probabilities to record the chosen label's probability."""
    limit: int | None = Field(None, ge=1)
    """Only the first N items of the split (for a quick look)."""
    retry_failed: bool = False
    """Ask again for items recorded with an error by an earlier run."""
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    batch_poll_s: float = Field(10.0, gt=0)
    """Seconds between Batch status checks."""

    def chat_settings(self) -> ChatSettings:
        return ChatSettings(
            prompt=self.prompt, detail=self.detail, answer=self.answer, logprobs=self.logprobs
        )

    def recorded_settings(self) -> dict[str, Any]:
        """The settings that define the arm's answers (a rerun must not change them)."""
        return {
            "split": self.split,
            "prompt": self.prompt,
            "detail": self.detail,
            "answer": self.answer,
            "logprobs": self.logprobs,
        }


class ClassifyResult(BaseModel):
    arm_dir: Path
    totals: dict[str, Any]
    summary: dict[str, Any]
    emulated: bool


def classify(
    prepared_dir: Path,
    options: ClassifyOptions,
    on_progress: Callable[[Progress], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> ClassifyResult:
    """Classify the split with the model; answers already recorded for this arm are not asked again."""
    prepared_dir = Path(prepared_dir)
    check_arm_name(options.name)
    ref = parse_openai_model(options.model)
    items, labels = load_split(prepared_dir, options.split)
    if options.limit:
        items = items[: options.limit]
    client = make_client(ref, timeout=options.runner.request_timeout_s)  # credentials checked first
    started = time.time()
    with Store.for_dir(prepared_dir) as store:
        previous = store.arm(options.name)
        if previous and (
            previous["model"] != str(ref) or previous["settings"] != options.recorded_settings()
        ):
            raise UserError(
                f"arm {options.name!r} was run with {previous['model']} {previous['settings']}: "
                "keep those settings to resume it, or choose another --name"
            )
        store.upsert_arm(options.name, str(ref), options.mode, options.recorded_settings())
        if options.retry_failed:
            store.forget(options.name, store.failed_ids(options.name))
        backend = OpenAIChatBackend(
            ref, labels, prepared_dir, options.chat_settings(), client=client
        )
        if options.mode == "batch":
            from .batch import run_batch

            summary: RunSummary = asyncio.run(
                run_batch(backend, items, store, options.name, options, on_progress, on_status)
            )
        else:
            summary = asyncio.run(_realtime(backend, items, store, options, on_progress))
        emulated = backend.emulated or _previously_emulated(arm_dir(prepared_dir, options.name))
        last_run: dict[str, Any] = {
            "started_at": started,
            "wall_s": round(summary.wall_s, 3),
            "requested": summary.requested,
            "skipped_already_done": summary.skipped,
            "errors": summary.errors,
            "retries": summary.retries,
            "error_kinds": summary.error_kinds,
        }
        extra: dict[str, Any] = {
            "provider": ref.provider,
            "split": options.split,
            "emulated": emulated,
            "runner": options.runner.model_dump(),
            "last_run": last_run,
            "versions": {
                "vlm_classify": __version__,
                "openai": openai.__version__,
                "python": platform.python_version(),
            },
        }
        ft = find_fine_tune(prepared_dir, str(ref))
        if ft is not None:
            keys = ("job_arm", "job_id", "base_model", "trained_tokens", "emulated")
            extra["fine_tune"] = {k: ft.get(k) for k in keys}
        out, totals = write_arm_files(prepared_dir, store, options.name, extra)
    return ClassifyResult(arm_dir=out, totals=totals, summary=last_run, emulated=emulated)


def _previously_emulated(out: Path) -> bool:
    """An arm answered by the emulator once stays marked, even if a rerun had nothing to ask."""
    try:
        return bool(json.loads((out / "arm.json").read_text(encoding="utf-8")).get("emulated"))
    except (OSError, ValueError):
        return False


async def _realtime(
    backend: OpenAIChatBackend,
    items: list[Any],
    store: Store,
    options: ClassifyOptions,
    on_progress: Callable[[Progress], None] | None,
) -> RunSummary:
    try:
        return await run_items(
            backend, items, store, options.name, "realtime", options.runner, on_progress
        )
    finally:
        await backend.aclose()


__all__ = ["ClassifyOptions", "ClassifyResult", "arm_dir", "classify"]
