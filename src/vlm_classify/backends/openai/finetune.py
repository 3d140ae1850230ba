"""`finetune`: a supervised vision fine-tune through the fine-tuning API, resumable.

Validate and write the training files locally (`export`), upload them, create the job, and follow
it. File and job ids are stored the moment they exist, and the job carries metadata naming the
arm and the exact input, so a rerun re-attaches to the job instead of starting (and paying for)
another. The outcome lands in `DIR/arms/ARM/finetune.json`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

import openai

from ...arms import FINETUNE_JSON, arm_dir, check_arm_name, read_job, write_job
from ...dataset.manifest import load_sample
from ...errors import FatalError, TransientError, UserError
from ...files import write_bytes_atomic
from ...pricing import image_finetune_problem
from ...prompts import PromptStyle
from ...store import Store
from .chat import make_client, parse_openai_model, translate_error
from .export import ExportOptions, ExportResult, export
from .wire import Detail

RESULTS_CSV = "finetune-results.csv"
TERMINAL = {"succeeded", "failed", "cancelled"}


class FinetuneOptions(BaseModel):
    """A fine-tuning job's settings; saved in finetune.json."""

    model: str
    """Base model, `openai/gpt-4o-2024-08-06` or `azure/gpt-4o-2024-08-06` (the base model name)."""
    name: str
    """The arm that records this job (its folder under `DIR/arms/`)."""
    epochs: int | Literal["auto"] = 2
    lr_multiplier: float | Literal["auto"] = 0.5
    batch_size: int | Literal["auto"] = "auto"
    seed: int | None = 42
    suffix: str | None = Field(None, max_length=64)
    """Added to the fine-tuned model's name."""
    prompt: PromptStyle = "full"
    """System prompt of the training examples; evaluate the fine-tuned model with the same one."""
    detail: Detail = "low"
    detach: bool = False
    """Create the job and return; a later run (or `--follow`) re-attaches to it."""
    follow_only: bool = False
    """Only re-attach to this arm's job; never create one."""
    poll_s: float = Field(10.0, gt=0)
    shots: int | None = Field(None, ge=1)
    """Train on this many images per class only (a learning curve's nested, seeded subset)."""

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.lr_multiplier,
        }


class FinetuneEvent(BaseModel):
    """A line for the live display: a job status change or one of the service's events."""

    kind: Literal["status", "event", "file", "job"]
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class FinetuneResult(BaseModel):
    path: Path
    """`finetune.json`."""
    record: dict[str, Any]


def finetune(
    prepared_dir: Path,
    options: FinetuneOptions,
    on_event: Callable[[FinetuneEvent], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `options.model` on the train split (validated with val); resume if already started."""
    prepared_dir = Path(prepared_dir)
    check_arm_name(options.name)
    ref = parse_openai_model(options.model)
    check_image_finetuning(options.model)
    sample = load_sample(prepared_dir).identity
    recorded = read_job(arm_dir(prepared_dir, options.name)).get("sample")
    if recorded not in (None, sample):
        raise UserError(
            f"arm {options.name!r} fine-tuned on another sample of {prepared_dir} (sample "
            f"{recorded[:12]}, now {sample[:12]}: it was prepared again since): start a new job "
            "with another --name"
        )
    client = make_client(ref)  # credentials checked before any work
    with Store.for_dir(prepared_dir) as store:
        session = _Session(
            client,
            ref.provider,
            ref.name,
            prepared_dir,
            options,
            store,
            on_event or (lambda _e: None),
            sample,
        )
        return asyncio.run(session.run())


def check_image_finetuning(model: str) -> None:
    """Refuse, before anything is uploaded, a model its provider does not fine-tune on images
    (`pricing.image_finetune_problem`). A model the table does not know (an Azure deployment of
    your own naming) is left to the service."""
    problem = image_finetune_problem(model)
    if problem:
        raise UserError(problem)


@dataclass
class _Session:
    """One `finetune` call: find or create the job, follow it, record the outcome."""

    client: openai.AsyncOpenAI
    provider: str
    base_name: str
    prepared_dir: Path
    options: FinetuneOptions
    store: Store
    emit: Callable[[FinetuneEvent], None]
    sample: str
    """The identity of the sample this job trains on (`sample_identity`)."""

    @property
    def out(self) -> Path:
        return arm_dir(self.prepared_dir, self.options.name)

    def say(self, kind: Literal["status", "event", "file", "job"], message: str) -> None:
        self.emit(FinetuneEvent(kind=kind, message=message))

    async def run(self) -> FinetuneResult:
        name = self.options.name
        try:
            job = await self._attach()
            if job is None:
                if self.options.follow_only:
                    raise UserError(
                        f"arm {name!r} has no fine-tuning job to follow: run without --follow first"
                    )
                job = await _create(
                    self.client, self.options, self.base_name, self.store, self._export(), self.emit
                )
                created = True
            else:
                created = False
            self.out.mkdir(parents=True, exist_ok=True)
            record = _record(job, self.provider, self.options, self.out)
            if created:  # a job re-attached by its stored id keeps the sample it recorded
                record["sample"] = self.sample
            write_job(self.out, record)
            if self.options.detach and job.status not in TERMINAL:
                self.say(
                    "status", "detached: rerun the same command (or add --follow) to re-attach"
                )
                return FinetuneResult(path=self.out / FINETUNE_JSON, record=record)
            job = await _follow(self.client, job, self.options.poll_s, self.emit)
            self.store.put_remote(name, "ft_job", "job", job.id, job.status)
            record = _record(job, self.provider, self.options, self.out)
            if job.status == "succeeded" and job.result_files:
                content = await self.client.files.content(job.result_files[0])
                write_bytes_atomic(self.out / RESULTS_CSV, _decode_results(content))
                record["results_csv"] = RESULTS_CSV
            record["emulated"] = await _emulated(self.client)
            write_job(self.out, record)
        except openai.OpenAIError as e:
            raise translate_error(e) from None
        finally:
            await self.client.close()
        if job.status == "failed":
            err = job.error.message if job.error and job.error.message else "no reason given"
            raise FatalError(
                f"fine-tuning job {job.id} failed: {err}. Fix the training data or settings, "
                "then rerun with a new --name"
            )
        if job.status == "cancelled":
            raise FatalError(
                f"fine-tuning job {job.id} was cancelled: rerun with a new --name to start another"
            )
        return FinetuneResult(path=self.out / FINETUNE_JSON, record=record)

    async def _attach(self) -> Any:
        """This arm's stored job, or None (also when the server no longer knows it)."""
        known = self.store.remote(self.options.name, "ft_job", "job")
        if known is None:
            return None
        try:
            job = await self.client.fine_tuning.jobs.retrieve(known.remote_id)
        except openai.NotFoundError:
            self.say(
                "status",
                f"job {known.remote_id} is unknown to this server: it will be started again",
            )
            self.store.forget_remote(self.options.name, "ft_job", "job")
            self.store.forget_remote(self.options.name, "ft_file")
            return None
        self.say("job", f"re-attached to job {job.id} ({job.status})")
        return job

    def _export(self) -> ExportResult:
        """Validate and write train/val locally (the limits are checked before any upload)."""
        o = self.options
        train_ids = None
        if o.shots is not None:
            from ...curve import nested_subset

            train = load_sample(self.prepared_dir).split("train")
            train_ids = frozenset(r.id for r in nested_subset(train, o.shots, o.seed or 0))
        result = export(
            self.prepared_dir,
            ExportOptions(
                model=o.model,
                prompt=o.prompt,
                training_prompt=o.prompt,
                detail=o.detail,
                train_ids=train_ids,
            ),
        )
        for w in result.warnings:
            self.say("status", f"warning: {w}")
        return result


def _input_key(options: FinetuneOptions, base_name: str, files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256(
        json.dumps([base_name, options.hyperparameters(), options.seed, options.suffix]).encode()
    )
    for name, digest in files:
        h.update(name.encode() + digest)
    return h.hexdigest()[:24]


async def _create(
    client: openai.AsyncOpenAI,
    options: FinetuneOptions,
    base_name: str,
    store: Store,
    exported: ExportResult,
    emit: Callable[[FinetuneEvent], None],
) -> Any:
    files = {f.kind: f for f in exported.files if f.kind in ("train", "val")}
    if "train" not in files:
        raise UserError(
            "the train split is empty: fine-tuning needs at least 10 training images (see `vlm-classify prepare --split`)"
        )
    key = _input_key(options, base_name, [(k, f.sha256.encode()) for k, f in sorted(files.items())])
    metadata = {"vlm_classify_arm": options.name[:64], "vlm_classify_input": key}
    async for job in await client.fine_tuning.jobs.list(limit=100):
        if (job.metadata or {}).get("vlm_classify_input") == key and job.status not in (
            "failed",
            "cancelled",
        ):
            store.put_remote(options.name, "ft_job", "job", job.id, job.status)
            emit(
                FinetuneEvent(
                    kind="job", message=f"found job {job.id} for this exact input ({job.status})"
                )
            )
            return job
    ids: dict[str, str] = {}
    for kind, f in sorted(files.items()):
        file_key = f"{kind}-{f.sha256[:24]}"
        stored = store.remote(options.name, "ft_file", file_key)
        if stored:
            ids[kind] = stored.remote_id
            continue
        emit(
            FinetuneEvent(
                kind="file",
                message=f"uploading {f.path.name} ({f.lines} examples, {f.bytes / 1e6:.1f} MB)",
            )
        )
        with f.path.open("rb") as fh:
            uploaded = await client.files.create(file=(f.path.name, fh), purpose="fine-tune")
        ids[kind] = uploaded.id
        store.put_remote(options.name, "ft_file", file_key, uploaded.id)
    hyper = {k: v for k, v in options.hyperparameters().items() if v != "auto"}
    kwargs: dict[str, Any] = {
        "model": base_name,
        "training_file": ids["train"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
        "metadata": metadata,
    }
    if "val" in ids:
        kwargs["validation_file"] = ids["val"]
    if options.seed is not None:
        kwargs["seed"] = options.seed
    if options.suffix:
        kwargs["suffix"] = options.suffix
    job = await client.fine_tuning.jobs.create(**kwargs)
    store.put_remote(options.name, "ft_job", "job", job.id, job.status, **ids)
    emit(FinetuneEvent(kind="job", message=f"created fine-tuning job {job.id} on {base_name}"))
    return job


async def _follow(
    client: openai.AsyncOpenAI, job: Any, poll_s: float, emit: Callable[[FinetuneEvent], None]
) -> Any:
    """Poll the job and its events until it ends; every new event and status change is emitted."""
    seen: set[str] = set()
    status = None
    while True:
        if job.status != status:
            status = job.status
            emit(
                FinetuneEvent(
                    kind="status", message=f"job {job.id}: {status}", data={"status": status}
                )
            )
        try:
            page = await client.fine_tuning.jobs.list_events(job.id, limit=100)
            for ev in reversed(page.data):  # the service lists newest first
                if ev.id not in seen:
                    seen.add(ev.id)
                    emit(
                        FinetuneEvent(
                            kind="event",
                            message=ev.message,
                            data=dict(ev.data or {}) if isinstance(ev.data, dict) else {},
                        )
                    )
        except openai.OpenAIError as e:
            if not isinstance(translate_error(e), TransientError):
                raise
        if job.status in TERMINAL:
            return job
        await asyncio.sleep(poll_s)
        try:
            job = await client.fine_tuning.jobs.retrieve(job.id)
        except openai.OpenAIError as e:
            if not isinstance(translate_error(e), TransientError):
                raise


def _decode_results(content: Any) -> bytes:
    """The result file as CSV bytes (OpenAI serves it base64-encoded; the emulator as plain CSV)."""
    data: bytes = content.content if hasattr(content, "content") else bytes(content)
    if data.lstrip().startswith(b"step"):
        return data
    try:
        decoded = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return data
    return decoded if decoded.lstrip().startswith(b"step") else data


async def _emulated(client: openai.AsyncOpenAI) -> bool:
    try:
        raw = await client.models.with_raw_response.list()
    except openai.OpenAIError:
        return False
    return bool(raw.headers.get("x-emulated"))


def _record(job: Any, provider: str, options: FinetuneOptions, out: Path) -> dict[str, Any]:
    previous = read_job(out)
    hyper = job.hyperparameters.model_dump() if job.hyperparameters else {}
    if job.method and job.method.supervised and job.method.supervised.hyperparameters:
        hyper = job.method.supervised.hyperparameters.model_dump()
    record = {
        **previous,
        "job_id": job.id,
        "status": job.status,
        "base_model": f"{provider}/{job.model}",
        "fine_tuned_model": job.fine_tuned_model,
        "trained_tokens": job.trained_tokens,
        "hyperparameters": hyper,
        "seed": job.seed,
        "suffix": options.suffix,
        "shots": options.shots,
        "prompt": options.prompt,
        "detail": options.detail,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "error": job.error.model_dump() if job.error and job.error.message else None,
        "updated_at": time.time(),
    }
    if job.fine_tuned_model:
        record["evaluate_with"] = (
            f"vlm-classify classify DIR --model {provider}/{job.fine_tuned_model if provider == 'openai' else '<deployment>'}"
            f" --name fine-tuned --prompt {options.prompt}"
        )
    return record
