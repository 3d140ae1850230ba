"""`classify`: run one arm (a model over a split), resumably: a chat model realtime or through the
Batch API, a local model in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import openai
from pydantic import BaseModel, Field

from . import __version__
from .arms import arm_dir, check_arm_name, find_fine_tune, write_arm_files
from .backends import registry
from .backends.base import LocalBackend, LocalSettings, Prediction
from .backends.local.templates import templates_identity
from .backends.openai.batch import BATCH_REMOTE_KINDS, BatchSettings, run_batch
from .backends.openai.chat import (
    ChatSettings,
    OpenAIChatBackend,
    ServerSupport,
    adapt_settings,
    check_server,
    is_served,
    make_client,
    public_address,
)
from .backends.openai.wire import AnswerMode, Detail
from .backends.registry import Kind
from .dataset.manifest import ManifestRow, Sample, Split, load_sample
from .errors import UserError
from .models import ModelRef, is_fine_tuned_name
from .prompts import PromptStyle
from .runner import Progress, RunnerConfig, RunSummary, peak_rss_mb, run_items, run_local
from .sequential import Interval, stopping_time
from .store import Store
from .tokens_check import TokenWatch, check_tokens
from .training import ARM_PREFIX, model_files_identity

Mode = Literal["realtime", "batch"]


class UntilDecided(BaseModel):
    """`--until-decided --against ARM`: answer the split in a seeded random order and stop once
    an anytime-valid confidence sequence for the paired accuracy difference decides
    (`sequential.py`)."""

    against: str
    """The arm compared with: it must already have answered the split."""
    margin: float = Field(0.0, ge=0, lt=1)
    """Also stop when the whole interval lies within +-margin: no difference that matters."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """The chance, over the whole run, that the interval ever misses the true difference."""
    seed: int = 0
    """Seed of the order the items are asked in."""


class ClassifyOptions(BaseModel):
    """Everything one arm's run depends on; saved in the store and in arm.json."""

    model: str
    """`PROVIDER/MODEL`: `openai/gpt-4o-2024-08-06`, `azure/<deployment>`, `clip/...`, `cnn/...`."""
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
    reset: bool = False
    """Discard this arm's recorded answers first (it was run on another sample or settings)."""
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    batch_poll_s: float = Field(10.0, gt=0)
    """Seconds between Batch status checks."""
    local: LocalSettings = Field(default_factory=LocalSettings)
    """How a local model (`clip/`, `cnn/`) runs: device, batch size, offline."""
    until_decided: UntilDecided | None = None
    """Stop once the comparison with another arm is decided (None: answer every item)."""
    label_order: int | None = None
    """List the labels to the model in an order shuffled with this seed (None: as prepared):
    how much of a zero-shot number is the prompt's luck (`sensitivity`)."""
    item_ids: list[str] | None = None
    """Only these items of the split (a sensitivity study's subsample); None: all."""

    def chat_settings(self) -> ChatSettings:
        return ChatSettings(
            prompt=self.prompt, detail=self.detail, answer=self.answer, logprobs=self.logprobs
        )

    def recorded_settings(
        self, kind: Kind = "remote", prepared_dir: Path | None = None
    ) -> dict[str, Any]:
        """The settings that define the arm's answers (a rerun must not change them)."""
        out = self._settings(kind, prepared_dir)
        if self.label_order is not None:
            out["label_order"] = self.label_order
        return out

    def _settings(self, kind: Kind, prepared_dir: Path | None) -> dict[str, Any]:
        if kind == "local":  # no prompt: the model's files, the labels (and templates) do
            out: dict[str, Any] = {"split": self.split}
            name = self.model.partition("/")[2]
            files = model_files_identity(name, prepared_dir) if prepared_dir else None
            if files:  # a trained model or a folder: retrained or replaced is another model
                out["model_files"] = files
            if self.model.startswith("clip/") and not name.startswith(ARM_PREFIX):
                out["templates"] = templates_identity(self.local.templates)
            if self.model.startswith("hf/"):  # a generative model: asked how, answering how
                out["prompt"] = self.local.prompt
                out["answer"] = self.local.answer
                if self.local.answer == "text":
                    out["max_new_tokens"] = self.local.max_new_tokens
            return out
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
    compute: dict[str, Any] | None = None
    """A local model's device, images per second and memory (None for a chat model)."""
    until_decided: dict[str, Any] | None = None
    """Where an `--until-decided` run stopped, and why."""


def classify(
    prepared_dir: Path,
    options: ClassifyOptions,
    on_progress: Callable[[Progress], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> ClassifyResult:
    """Classify the split with the model; answers already recorded for this arm are not asked again."""
    prepared_dir = Path(prepared_dir)
    check_arm_name(options.name)
    ref, provider = registry.parse(options.model)
    if options.until_decided is not None:
        if options.until_decided.against == options.name:
            raise UserError("--against names the arm itself: compare with another arm")
        if options.mode == "batch" and provider.kind == "remote":
            raise UserError(
                "--until-decided asks item by item and checks as it goes: the Batch API answers "
                "all at once; drop --mode batch"
            )
    if provider.kind == "local" and options.mode == "batch":
        raise UserError(
            f"--mode batch is the Batch API of openai/ and azure/ models: {ref.provider}/ models "
            "run here in batches of --batch-size; drop --mode"
        )
    sample = load_sample(prepared_dir)
    items = sample.split(options.split)
    labels = sample.labels
    if options.item_ids is not None:
        wanted = set(options.item_ids)
        items = [it for it in items if it.id in wanted]
    if options.label_order is not None:
        if ref.provider not in ("openai", "azure", "hf") or ref.name.startswith(ARM_PREFIX):
            raise UserError(
                f"a label order is a prompt's: {ref} does not list the labels to the model "
                "(zero-shot openai/, azure/ and hf/ models do)"
            )
        labels = list(labels)
        random.Random(options.label_order).shuffle(labels)
    if options.limit:
        items = items[: options.limit]
    fine_tune = find_fine_tune(prepared_dir, str(ref))
    _check_fine_tune_sample(fine_tune, sample, str(ref))
    module = provider.load()  # a missing extra is one line, before any work
    client = None
    if provider.kind == "remote":  # credentials checked before any work
        client = make_client(ref, timeout=options.runner.request_timeout_s)
    if hasattr(module, "default_prompt") and options.local.prompt is None:  # hf/: say which
        local = options.local.model_copy(
            update={"prompt": module.default_prompt(ref, prepared_dir)}
        )
        options = options.model_copy(update={"local": local})
    mode = options.mode if provider.kind == "remote" else "local"
    settings = options.recorded_settings(provider.kind, prepared_dir)
    if client is not None:  # the emulator's answers never resume against the real service
        settings["service"] = urlsplit(str(client.base_url)).hostname or ""
    started = time.time()
    with Store.for_dir(prepared_dir) as store, contextlib.ExitStack() as stack:
        if client is not None:  # before the arm is bound: it records what the server really does
            options, settings = _check_server(
                client, ref, labels, prepared_dir, options, settings, on_status
            )
        if not options.reset:  # refusals first: nothing loaded, nothing deleted
            _bind_arm(store, prepared_dir, options, str(ref), settings, sample.identity)
        backend = None
        if client is None:  # the model loads before --reset deletes anything
            backend = module.make_backend(ref, labels, prepared_dir, options.local)
            stack.callback(backend.close)
        if options.reset:
            _discard_arm(store, prepared_dir, options.name, on_status)
        store.upsert_arm(options.name, str(ref), mode, settings, sample.identity)
        if options.retry_failed:
            store.forget(options.name, store.failed_ids(options.name))
        seq = _Sequence(store, options, items) if options.until_decided else None
        extra: dict[str, Any] = {"versions": _versions()}
        if backend is not None:
            summary, compute = _run_local(
                backend,
                items,
                store,
                options,
                _previous_compute(prepared_dir, options.name),
                on_progress,
                seq,
            )
            extra["compute"] = compute
            emulated = False
        else:
            summary, emulated, tokens_check = _run_remote(
                cast(openai.AsyncOpenAI, client),  # a remote model always has its client
                ref,
                labels,
                prepared_dir,
                items,
                store,
                options,
                fine_tune,
                on_progress,
                on_status,
                seq,
                split_rows=sample.split(options.split),
                check_bill="server" not in settings,  # a served model bills in its own tokens
            )
            extra["runner"] = options.runner.model_dump()
            extra["versions"]["openai"] = openai.__version__
            if tokens_check is not None:
                extra["tokens_check"] = tokens_check
        last_run: dict[str, Any] = {
            "started_at": started,
            "wall_s": round(summary.wall_s, 3),
            "requested": summary.requested,
            "completed": summary.completed,
            "skipped_already_done": summary.skipped,
            "errors": summary.errors,
            "retries": summary.retries,
            "error_kinds": summary.error_kinds,
            "batch_lines_retried": summary.batch_lines_retried,
        }
        extra |= {
            "provider": ref.provider,
            "split": options.split,
            "sample": {"id": sample.identity, "items": len(sample.rows)},
            "fine_tuned": fine_tune is not None or is_fine_tuned_name(ref.name),
            "emulated": emulated,
            "last_run": last_run,
        }
        if seq is not None:
            extra["until_decided"] = seq.result
        if fine_tune is not None:
            keys = ("job_arm", "job_id", "base_model", "trained_tokens", "emulated")
            extra["fine_tune"] = {k: fine_tune.get(k) for k in keys}
        out, totals = write_arm_files(prepared_dir, store, options.name, extra)
    return ClassifyResult(
        arm_dir=out,
        totals=totals,
        summary=last_run,
        emulated=emulated,
        compute=extra.get("compute"),
        until_decided=extra.get("until_decided"),
    )


def _versions() -> dict[str, str]:
    return {"vlm_classify": __version__, "python": platform.python_version()}


def _check_server(
    client: openai.AsyncOpenAI,
    ref: ModelRef,
    labels: list[str],
    prepared_dir: Path,
    options: ClassifyOptions,
    settings: dict[str, Any],
    on_status: Callable[[str], None] | None,
) -> tuple[ClassifyOptions, dict[str, Any]]:
    """A served model (`openai/` at another address than OpenAI's, not the emulator): ask its
    server once what it does with the answer schema and logprobs (`check_server`), and run with
    what it really does: an answer it does not constrain is asked for and recorded as `text`, never
    counted as constrained. Returns the options to run with and the arm's recorded settings, with
    what the server does under `server` (unchanged when it is not a served model)."""
    if not is_served(ref, str(client.base_url)):
        return options, settings
    timeout = options.runner.request_timeout_s
    probe = OpenAIChatBackend(  # its own client: this event loop ends before the run's starts
        ref, labels, prepared_dir, options.chat_settings(), client=make_client(ref, timeout)
    )

    async def ask() -> ServerSupport | None:
        try:
            return await check_server(probe, options.runner)
        finally:
            await probe.aclose()

    support = asyncio.run(ask())
    if support is None:  # the built-in emulator
        return options, settings
    chat, said = adapt_settings(
        options.chat_settings(), support, public_address(str(client.base_url))
    )
    if said and on_status:
        on_status(said)
    update = {"answer": chat.answer, "logprobs": chat.logprobs}
    return options.model_copy(update=update), settings | update | {"server": support.record()}


def _run_remote(
    client: openai.AsyncOpenAI,
    ref: ModelRef,
    labels: list[str],
    prepared_dir: Path,
    items: list[ManifestRow],
    store: Store,
    options: ClassifyOptions,
    fine_tune: dict[str, Any] | None,
    on_progress: Callable[[Progress], None] | None,
    on_status: Callable[[str], None] | None,
    seq: _Sequence | None = None,
    split_rows: list[ManifestRow] | None = None,
    check_bill: bool = True,
) -> tuple[RunSummary, bool, dict[str, Any] | None]:
    """A chat model over the items, realtime or through the Batch API; whether the emulator
    answered; and the arm's billed usage against the estimate (`tokens_check`, None when not
    checked).

    The bill is checked as answers arrive: after the first `tokens_check.FIRST` answers of a
    realtime run, after a Batch run's output is in (or at the end, for a run with fewer), the
    billed prompt tokens are compared with the estimate for the same requests, and a difference
    over `tokens_check.TOLERANCE` is said once through `on_status`."""
    backend = OpenAIChatBackend(ref, labels, prepared_dir, options.chat_settings(), client=client)
    if fine_tune is not None:  # an Azure deployment's name says nothing of its image rule
        backend.base_model = str(fine_tune.get("base_model") or "") or None
    watch = TokenWatch(
        str(ref),
        options.name,
        backend.estimate_prompt_tokens,
        backend.estimate_completion_tokens,
        on_status if check_bill else None,
    )
    if options.mode == "batch":
        settings = BatchSettings(
            runner=options.runner, poll_s=options.batch_poll_s, fine_tuned=fine_tune is not None
        )
        summary: RunSummary = asyncio.run(
            run_batch(backend, items, store, options.name, settings, on_progress, on_status)
        )
    else:
        summary = asyncio.run(_realtime(backend, items, store, options, on_progress, seq, watch))
    emulated = backend.emulated or _previously_emulated(arm_dir(prepared_dir, options.name))
    if not check_bill:
        return summary, emulated, None
    by_id = {it.id: it for it in (split_rows if split_rows is not None else items)}
    pairs = [
        (by_id[r.item_id], r.result)
        for r in sorted(store.predictions(options.name), key=lambda r: (r.finished_at, r.item_id))
        if r.item_id in by_id
    ]
    if summary.completed:  # nothing asked this run: nothing new to warn of
        watch.decide(pairs)
    check = check_tokens(pairs, backend.estimate_prompt_tokens, backend.estimate_completion_tokens)
    return summary, emulated, check.record() if check.items else None


class _Watched:
    """A chat backend whose answers are shown to a `TokenWatch` as they arrive."""

    def __init__(self, backend: OpenAIChatBackend, watch: TokenWatch) -> None:
        self.backend, self.watch = backend, watch
        self.name = backend.name

    async def classify(self, item: ManifestRow) -> Prediction:
        prediction = await self.backend.classify(item)
        self.watch.see(item, prediction)
        return prediction

    def release(self, item: ManifestRow) -> None:
        self.backend.release(item)

    async def aclose(self) -> None:
        await self.backend.aclose()


def _run_local(
    backend: LocalBackend,
    items: list[ManifestRow],
    store: Store,
    options: ClassifyOptions,
    previous: dict[str, Any],
    on_progress: Callable[[Progress], None] | None,
    seq: _Sequence | None = None,
) -> tuple[RunSummary, dict[str, Any]]:
    """A local model over the items in batches; and what it ran on and how fast.

    The speed is the model's real work: a backend that reuses cached work (`speed()`: CLIP's
    embedding cache) says what its images took to compute; otherwise the time spent classifying
    this run's batches. A rerun with nothing to do keeps the speed and price recorded before.
    """
    if seq is None:
        summary = run_local(
            backend, items, store, options.name, options.local.batch_size, on_progress
        )
    else:
        summary = _empty_summary()
        for chunk in seq.chunks(options.local.batch_size):
            part = run_local(
                backend, chunk, store, options.name, options.local.batch_size,
                seq.progress(on_progress),
            )  # fmt: skip
            summary = _add(summary, part)
        seq.finish()
    speed = backend.speed() if hasattr(backend, "speed") else None
    if speed is None and summary.completed and summary.busy_s:
        speed = (summary.completed, summary.busy_s)
    same_device = str(previous.get("device", "")).split(":")[0] == backend.device.split(":")[0]
    if speed is None and same_device and previous.get("images_per_s"):
        speed = (int(previous.get("speed_images") or 0), float(previous.get("speed_s") or 0.0))
        images_per_s = previous["images_per_s"]
    else:
        images_per_s = round(speed[0] / speed[1], 3) if speed and speed[1] else None
    price = options.local.price_per_hour(backend.device)
    if price is None and same_device:
        price = previous.get("price_per_hour")
    compute = {
        "device": backend.device,
        "batch_size": options.local.batch_size,
        "images": summary.completed,
        "busy_s": round(summary.busy_s or 0.0, 3),
        "images_per_s": images_per_s,
        "speed_images": speed[0] if speed else None,
        "speed_s": round(speed[1], 3) if speed else None,
        "price_per_hour": price,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": backend.gpu_peak_mb(),
        "versions": backend.versions(),
    }
    if hasattr(backend, "details"):  # how a generative model was asked and scored
        compute["model"] = backend.details()
    return summary, compute


def _previous_compute(prepared_dir: Path, name: str) -> dict[str, Any]:
    try:
        doc = json.loads((arm_dir(prepared_dir, name) / "arm.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    compute = doc.get("compute") if isinstance(doc, dict) else None
    return compute if isinstance(compute, dict) else {}


def _bind_arm(
    store: Store,
    prepared_dir: Path,
    options: ClassifyOptions,
    model: str,
    settings: dict[str, Any],
    sample: str,
) -> None:
    """Refuse to resume an arm recorded for another sample, model or settings (nothing is
    deleted: `--reset` discards it, see `_discard_arm`)."""
    name = options.name
    previous = store.arm(name)
    if previous is None or not store.has_records(name):
        return  # nothing recorded yet: nothing to mix up
    fix = f"choose another --name, or add --reset to discard arm {name!r}'s answers"
    if previous["sample"] is None:
        raise UserError(
            f"arm {name!r} was recorded before arms were bound to their sample, so its answers "
            f"may belong to an earlier preparation of {prepared_dir}: {fix}"
        )
    if previous["sample"] != sample:
        raise UserError(
            f"arm {name!r} was run on another sample (sample {previous['sample'][:12]}; "
            f"{prepared_dir} now holds sample {sample[:12]}, prepared again since): {fix}"
        )
    if previous["model"] != model or previous["settings"] != settings:
        raise UserError(
            f"arm {name!r} was run with {previous['model']} {previous['settings']}: "
            f"keep those settings to resume it, or {fix}"
        )


def _discard_arm(
    store: Store, prepared_dir: Path, name: str, on_status: Callable[[str], None] | None
) -> None:
    """`--reset`: forget the arm's answers, its Batch objects and its files."""
    if store.arm(name) is None:
        return
    n = store.discard_arm(name, BATCH_REMOTE_KINDS)
    out = arm_dir(prepared_dir, name)
    for f in ("predictions.csv", "arm.json"):
        (out / f).unlink(missing_ok=True)
    if on_status:
        on_status(f"--reset: discarded the {n} answer(s) recorded for arm {name!r}")


def _check_fine_tune_sample(record: dict[str, Any] | None, sample: Sample, model: str) -> None:
    """A model fine-tuned on another sample of this folder may have trained on its test items."""
    if record is None or record.get("sample") in (None, sample.identity):
        return
    raise UserError(
        f"{model} was fine-tuned (arm {record.get('job_arm')!r}) on another sample of "
        f"{sample.dir} (sample {str(record['sample'])[:12]}, now {sample.short_id}): its training "
        "items may now be test items. Fine-tune again on this sample with a new --name"
    )


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
    seq: _Sequence | None = None,
    watch: TokenWatch | None = None,
) -> RunSummary:
    asking = _Watched(backend, watch) if watch is not None else backend
    try:
        if seq is None:
            return await run_items(
                asking,
                items,
                store,
                options.name,
                "realtime",
                options.runner,
                on_progress,
                token_estimate=backend.estimate_tokens,
            )
        summary = _empty_summary()
        for chunk in seq.chunks(max(options.runner.concurrency, 1)):
            part = await run_items(
                asking,
                chunk,
                store,
                options.name,
                "realtime",
                options.runner,
                seq.progress(on_progress),
                token_estimate=backend.estimate_tokens,
                reached=summary.completed > 0,
            )
            summary = _add(summary, part)
        seq.finish()
        return summary
    finally:
        await backend.aclose()


class _Sequence:
    """The items of an `--until-decided` run in their seeded order, a chunk at a time until the
    confidence sequence against the other arm decides; its record goes to arm.json."""

    def __init__(self, store: Store, options: ClassifyOptions, items: list[ManifestRow]) -> None:
        spec = options.until_decided
        assert spec is not None
        self.store, self.name, self.spec = store, options.name, spec
        other = store.predictions(spec.against) if store.arm(spec.against) else []
        self.against = {p.item_id: p.correct for p in other if p.result.error is None}
        by_id = {it.id: it for it in items if it.id in self.against}
        if not by_id:
            raise UserError(
                f"--against {spec.against}: that arm has no answers for these items; classify "
                "it on the same split first"
            )
        ids = sorted(by_id)
        random.Random(spec.seed).shuffle(ids)
        self.order = [by_id[i] for i in ids]
        self.skipped_unpaired = len(items) - len(self.order)
        self.result: dict[str, Any] = {}
        self.done_before = 0

    def state(self) -> tuple[int, str | None, Interval | None, int]:
        """(pairs used, decision, interval, items answered) over the answered prefix."""
        mine = {p.item_id: p for p in self.store.predictions(self.name)}
        diffs: list[int] = []
        answered = 0
        for it in self.order:
            p = mine.get(it.id)
            if p is None:
                break
            answered += 1
            if p.result.error is None:
                diffs.append(int(p.correct) - int(self.against[it.id]))
        t, decision, interval = stopping_time(diffs, self.spec.alpha, self.spec.margin)
        return t, decision, interval, answered

    def chunks(self, size: int) -> Iterator[list[ManifestRow]]:
        while True:
            _, decision, _, answered = self.state()
            self.done_before = answered
            if decision or answered >= len(self.order):
                return
            yield self.order[answered : answered + size]

    def progress(
        self, on_progress: Callable[[Progress], None] | None
    ) -> Callable[[Progress], None] | None:
        if on_progress is None:
            return None
        base, total = self.done_before, len(self.order)

        def shifted(p: Progress) -> None:
            on_progress(Progress(total, base + p.done - p.skipped, p.errors, p.retries, base))

        return shifted

    def finish(self) -> None:
        t, decision, interval, answered = self.state()
        self.result = {
            "against": self.spec.against,
            "alpha": self.spec.alpha,
            "margin": self.spec.margin,
            "seed": self.spec.seed,
            "method": "predictable plug-in empirical-Bernstein confidence sequence "
            "(Waudby-Smith & Ramdas, JRSSB 2024, Theorem 2) on the paired differences",
            "items": len(self.order),
            "answered": answered,
            "needed": t if decision else None,
            "unasked": len(self.order) - answered,
            "decision": decision,
            "interval": None if interval is None else [interval.low, interval.high],
            "estimate": None if interval is None else interval.estimate,
            "unpaired_items": self.skipped_unpaired,
        }


def _empty_summary() -> RunSummary:
    return RunSummary(requested=0, completed=0, errors=0, retries=0, skipped=0, wall_s=0.0)


def _add(a: RunSummary, b: RunSummary) -> RunSummary:
    kinds = dict(a.error_kinds)
    for k, v in b.error_kinds.items():
        kinds[k] = kinds.get(k, 0) + v
    return RunSummary(
        requested=a.requested + b.requested,
        completed=a.completed + b.completed,
        errors=a.errors + b.errors,
        retries=a.retries + b.retries,
        skipped=a.skipped + b.skipped,
        wall_s=a.wall_s + b.wall_s,
        error_kinds=kinds,
        busy_s=(a.busy_s or 0.0) + (b.busy_s or 0.0) if b.busy_s is not None else a.busy_s,
    )


__all__ = ["ClassifyOptions", "ClassifyResult", "arm_dir", "classify"]
