"""Fine-tuning jobs: training-file validation like the service's, the validating_files → queued →
running → succeeded timeline on a compressed clock, events, checkpoints and a results file.

Like batches, a job catches up with the clock whenever it is read.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backends.openai import spec
from . import draw
from .apierror import ApiError
from .state import FineTunedModel, Store

MESSAGE_SCHEMA = "ChatCompletionRequestMessage"
# Fractions of the job time at which each phase ends.
VALIDATED, STARTED, MODEL_CREATED = 0.1, 0.2, 0.97
FAIL_AT = 0.6
METRIC_EVENTS = 20
CHECKPOINT_EPOCHS = 3
# OpenAI's documented rule for `n_epochs: auto` (the fine-tuning data preparation cookbook).
TARGET_EXAMPLES = (100, 25_000)
EPOCH_RANGE = (1, 25)

ExampleTokens = Callable[[list[dict[str, Any]], str, str], int]
"""`(messages, base model, param) -> tokens` of one training example, text and images."""


class TrainingFileError(Exception):
    """A training or validation file the service would refuse: the job fails with it."""

    def __init__(self, code: str, message: str, param: str) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class Dataset:
    examples: int
    tokens: int


def check_training_file(
    lines: Iterable[bytes], param: str, model: str, min_examples: int, count: ExampleTokens
) -> Dataset:
    """Validate a chat fine-tuning JSONL file and count its tokens (TrainingFileError if bad).

    It is read line by line: a training file of a full-size dataset is hundreds of MB."""
    examples = 0
    total = 0
    for n, data in enumerate(lines, start=1):
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TrainingFileError(
                "invalid_file_format",
                "Invalid file format. The file is not UTF-8 encoded JSONL.",
                param,
            ) from None
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            raise TrainingFileError(
                "invalid_file_format", f"Invalid file format. Line {n} is not valid JSON.", param
            ) from None
        messages = line.get("messages") if isinstance(line, dict) else None
        if not isinstance(messages, list) or not messages:
            raise TrainingFileError(
                "invalid_file_format",
                f'Invalid file format. Example {n} is missing key "messages".',
                param,
            )
        for i, message in enumerate(messages):
            problems = (
                []
                if spec.is_valid(MESSAGE_SCHEMA, message)
                else spec.validate(MESSAGE_SCHEMA, message)
            )
            if problems:
                raise TrainingFileError(
                    "invalid_file_format",
                    f"Invalid file format. Example {n}, message {i + 1}: {problems[0]}",
                    param,
                )
        if not any(m.get("role") == "assistant" for m in messages):
            raise TrainingFileError(
                "invalid_file_format",
                f"Invalid file format. Example {n} has no assistant message.",
                param,
            )
        try:
            total += count(messages, model, f"{param} line {n}")
        except ApiError as e:
            raise TrainingFileError(
                "invalid_file_format", f"Invalid file format. Example {n}: {e.message}", param
            ) from None
        examples += 1
    if examples < min_examples:
        kind = "Training" if param == "training_file" else "Validation"
        raise TrainingFileError(
            "invalid_n_examples",
            f"{kind} file has {examples} example(s), but must have at least {min_examples} examples",
            param,
        )
    return Dataset(examples, total)


def resolve_hyperparameters(requested: dict[str, Any], n_examples: int) -> dict[str, Any]:
    """Replace `auto` (or missing) hyperparameters by the values the service would pick."""
    n_epochs = requested.get("n_epochs", "auto")
    if n_epochs in (None, "auto"):
        n_epochs = 3
        if n_examples * n_epochs < TARGET_EXAMPLES[0]:
            n_epochs = min(EPOCH_RANGE[1], math.ceil(TARGET_EXAMPLES[0] / n_examples))
        elif n_examples * n_epochs > TARGET_EXAMPLES[1]:
            n_epochs = max(EPOCH_RANGE[0], TARGET_EXAMPLES[1] // n_examples)
    batch_size = requested.get("batch_size", "auto")
    if batch_size in (None, "auto"):
        batch_size = max(1, min(256, round(0.002 * n_examples)))
    lr = requested.get("learning_rate_multiplier", "auto")
    if lr in (None, "auto"):
        lr = 2.0 if batch_size <= 8 else 1.8
    return {
        "batch_size": int(batch_size),
        "learning_rate_multiplier": float(lr),
        "n_epochs": int(n_epochs),
    }


@dataclass
class Timed:
    """Something that becomes visible at a fraction of the job's time."""

    at: float
    obj: dict[str, Any]


@dataclass
class JobRecord:
    """One fine-tuning job and everything it produced."""

    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    seed: int
    requested: dict[str, Any]
    metadata: dict[str, str] | None
    created: float
    style: str
    will_fail: bool
    status: str = "validating_files"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    events: list[Timed] = field(default_factory=list)
    checkpoints: list[Timed] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    dataset: Dataset | None = None
    end_at: float = 1.0
    """Fraction of the job time at which it ends (sooner when it fails)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_api(self) -> dict[str, Any]:
        hp = self.hyperparameters or {
            "batch_size": self.requested.get("batch_size", "auto"),
            "learning_rate_multiplier": self.requested.get("learning_rate_multiplier", "auto"),
            "n_epochs": self.requested.get("n_epochs", "auto"),
        }
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": int(self.created),
            "error": self.error,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": self.finished_at,
            "hyperparameters": hp,
            "model": self.model,
            "organization_id": "org-emulated",
            "result_files": list(self.result_files),
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "integrations": None,
            "seed": self.seed,
            "estimated_finish": None,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
            "metadata": self.metadata,
        }


class JobRunner:
    """Creates fine-tuning jobs and moves them along their timeline."""

    def __init__(
        self,
        store: Store,
        count: ExampleTokens,
        seconds: float,
        min_examples: int,
        organization: str,
        fail_rate: float,
        seed: int,
        on_fault: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.count = count
        self.seconds = seconds
        self.min_examples = min_examples
        self.organization = organization
        self.fail_rate = fail_rate
        self.seed = seed
        self.on_fault = on_fault
        self.jobs: dict[str, JobRecord] = {}

    def create(self, body: dict[str, Any], style: str, n: int) -> JobRecord:
        method = body.get("method") or {}
        requested = dict(body.get("hyperparameters") or {})
        requested.update(((method.get("supervised") or {}).get("hyperparameters")) or {})
        job_id = self.store.new_id("ftjob-", 24)
        seed = body.get("seed")
        record = JobRecord(
            id=job_id,
            model=body["model"],
            training_file=body["training_file"],
            validation_file=body.get("validation_file"),
            suffix=body.get("suffix"),
            seed=int(seed)
            if seed is not None
            else int(draw.uniform(self.seed, "ft-seed", job_id) * 2**31),
            requested=requested,
            metadata=body.get("metadata"),
            created=self.store.now(),
            style=style,
            will_fail=draw.uniform(self.seed, "ft-fail", n) < self.fail_rate,
        )
        self._event(record, 0.0, f"Created fine-tuning job: {job_id}")
        self._event(record, 0.0, f"Validating training file: {record.training_file}")
        if record.validation_file:
            self._event(record, 0.0, f"Validating validation file: {record.validation_file}")
        with self.store.lock:
            self.jobs[job_id] = record
        self.advance(record)
        return record

    def get(self, job_id: str) -> JobRecord:
        with self.store.lock:
            record = self.jobs.get(job_id)
        if record is None:
            raise ApiError(
                404,
                f"Could not find fine-tune: {job_id}",
                param="fine_tuning_job_id",
                code="fine_tune_not_found",
            )
        self.advance(record)
        return record

    def all(self) -> list[JobRecord]:
        """Every job, newest first."""
        with self.store.lock:
            records = list(self.jobs.values())
        for r in records:
            self.advance(r)
        return sorted(records, key=lambda r: (r.created, r.id), reverse=True)

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        with record.lock:
            if record.status in ("succeeded", "failed", "cancelled"):
                raise ApiError(
                    400,
                    f"Cannot cancel a job that has status {record.status}.",
                    param="fine_tuning_job_id",
                    code="invalid_state",
                )
            now = self.store.now()
            record.status = "cancelled"
            record.finished_at = int(now)
            at = (now - record.created) / self.seconds if self.seconds > 0 else 0.0
            record.events = [e for e in record.events if e.at <= at]
            record.checkpoints = [c for c in record.checkpoints if c.at <= at]
            self._event(record, at, "Fine-tuning job cancelled")
        return record

    def visible_events(self, record: JobRecord) -> list[dict[str, Any]]:
        """Events up to now, newest first (as the API lists them)."""
        at = self._fraction(record)
        shown = [
            e
            for e in record.events
            if e.at <= at or record.status in ("succeeded", "failed", "cancelled")
        ]
        order = {id(e): i for i, e in enumerate(record.events)}
        return [e.obj for e in sorted(shown, key=lambda e: (e.at, order[id(e)]), reverse=True)]

    def visible_checkpoints(self, record: JobRecord) -> list[dict[str, Any]]:
        at = self._fraction(record)
        shown = [
            c
            for c in record.checkpoints
            if c.at <= at or record.status in ("succeeded", "cancelled")
        ]
        return [c.obj for c in sorted(shown, key=lambda c: c.at, reverse=True)]

    # --- the timeline ------------------------------------------------------------------------

    def _fraction(self, record: JobRecord) -> float:
        if self.seconds <= 0:
            return math.inf
        return (self.store.now() - record.created) / self.seconds

    def _time(self, record: JobRecord, at: float) -> int:
        return int(record.created + at * self.seconds)

    def _event(
        self,
        record: JobRecord,
        at: float,
        message: str,
        level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        obj: dict[str, Any] = {
            "object": "fine_tuning.job.event",
            "id": "ftevent-" + draw.token(24, self.seed, "ftevent", record.id, len(record.events)),
            "created_at": self._time(record, at),
            "level": level,
            "message": message,
            "type": "metrics" if data else "message",
            "data": data or {},
        }
        record.events.append(Timed(at, obj))

    def advance(self, record: JobRecord) -> None:
        """Catch the job up with the clock."""
        with record.lock:
            at = self._fraction(record)
            if record.status == "validating_files" and at >= VALIDATED:
                self._validate(record)
            if record.status == "queued" and at >= STARTED:
                record.status = "running"
            if record.status == "running" and at >= record.end_at:
                self._finish(record)

    def _validate(self, record: JobRecord) -> None:
        try:
            train = self._check_file(record.training_file, "training_file", record.model)
            if record.validation_file:
                self._check_file(record.validation_file, "validation_file", record.model)
        except TrainingFileError as e:
            message = f"The job failed due to an invalid {e.param.replace('_', ' ')}. {e.message}"
            record.status = "failed"
            record.error = {"code": e.code, "message": message, "param": e.param}
            record.finished_at = self._time(record, VALIDATED)
            self._event(record, VALIDATED, message, level="error")
            return
        record.dataset = train
        record.hyperparameters = resolve_hyperparameters(record.requested, train.examples)
        record.status = "queued"
        self._event(record, VALIDATED, "Files validated, moving job to queued state")
        self._event(record, VALIDATED, "Job enqueued. Waiting for jobs ahead to complete.")
        self._event(record, STARTED, "Fine-tuning job started")
        self._plan_training(record)

    def _check_file(self, file_id: str, param: str, model: str) -> Dataset:
        with self.store.lock:
            f = self.store.files.get(file_id)
        if f is None:
            raise TrainingFileError("file_not_found", f"File {file_id} not found.", param)
        # The service asks 10 examples of a training file; a validation file needs only one.
        least = self.min_examples if param == "training_file" else 1
        return check_training_file(f.lines(), param, model, least, self.count)

    def _plan_training(self, record: JobRecord) -> None:
        """Lay out the training run: loss curve, metric events, checkpoints, the end."""
        dataset = record.dataset
        if dataset is None:  # only _validate calls this, after setting it
            return
        hp = record.hyperparameters
        steps_per_epoch = math.ceil(dataset.examples / hp["batch_size"])
        total = steps_per_epoch * hp["n_epochs"]
        name = self._model_name(record)
        run_span = MODEL_CREATED - STARTED
        every = max(1, total // METRIC_EVENTS)
        fail_step = math.ceil(total * (FAIL_AT - STARTED) / run_span) if record.will_fail else None
        for step in range(1, total + 1):
            if fail_step is not None and step > fail_step:
                break
            m = self._metrics(record, step, total)
            record.metrics.append(m)
            at = STARTED + run_span * step / total
            if step % every == 0 or step == total:
                self._event(
                    record,
                    at,
                    f"Step {step}/{total}: training loss={m['train_loss']:.4f}",
                    data={
                        "step": step,
                        "train_loss": m["train_loss"],
                        "train_mean_token_accuracy": m["train_accuracy"],
                        "total_steps": total,
                    },
                )
            epoch, rem = divmod(step, steps_per_epoch)
            if rem == 0 and epoch > hp["n_epochs"] - CHECKPOINT_EPOCHS:
                ckpt = f"{name}:ckpt-step-{step}"
                record.checkpoints.append(
                    Timed(
                        at,
                        {
                            "object": "fine_tuning.job.checkpoint",
                            "id": "ftckpt_" + draw.token(24, self.seed, "ftckpt", record.id, step),
                            "created_at": self._time(record, at),
                            "fine_tuned_model_checkpoint": ckpt,
                            "fine_tuning_job_id": record.id,
                            "step_number": step,
                            "metrics": {
                                "step": float(step),
                                "train_loss": m["train_loss"],
                                "train_mean_token_accuracy": m["train_accuracy"],
                                "valid_loss": m["valid_loss"],
                                "valid_mean_token_accuracy": m["valid_mean_token_accuracy"],
                                "full_valid_loss": m["valid_loss"],
                                "full_valid_mean_token_accuracy": m["valid_mean_token_accuracy"],
                            },
                        },
                    )
                )
                if step != total:
                    self._event(record, at, f"Checkpoint created at step {step}")
        if fail_step is not None:
            record.end_at = FAIL_AT
            return
        record.end_at = 1.0
        self._event(record, MODEL_CREATED, f"New fine-tuned model created: {name}")
        self._event(record, MODEL_CREATED, f"Checkpoint created at step {total}")
        self._event(record, 1.0, "The job has successfully completed")

    def _metrics(self, record: JobRecord, step: int, total: int) -> dict[str, float]:
        x = step / total
        noise = draw.uniform(self.seed, "loss", record.id, step) - 0.5
        train_loss = max(0.005, 0.05 + 2.4 * math.exp(-5 * x) + 0.12 * noise)
        valid_loss = max(0.01, 0.12 + 2.2 * math.exp(-4 * x) + 0.08 * noise)
        return {
            "step": float(step),
            "train_loss": round(train_loss, 5),
            "train_accuracy": round(min(1.0, max(0.0, 1 - train_loss / 2.6)), 5),
            "valid_loss": round(valid_loss, 5),
            "valid_mean_token_accuracy": round(min(1.0, max(0.0, 1 - valid_loss / 2.6)), 5),
        }

    def _model_name(self, record: JobRecord) -> str:
        if record.style == "openai":
            short = draw.token(8, self.seed, "ftmodel", record.id)
            return f"ft:{record.model}:{self.organization}:{record.suffix or ''}:{short}"
        # Azure names fine-tuned models `<base>.ft-<32 hex>[-<suffix>]`.
        name = f"{record.model}.ft-{draw.hex_token(32, self.seed, 'ftmodel', record.id)}"
        return f"{name}-{record.suffix}" if record.suffix else name

    def _finish(self, record: JobRecord) -> None:
        end = self._time(record, record.end_at)
        record.result_files = [self._results_file(record)]
        record.finished_at = end
        if record.will_fail:
            record.status = "failed"
            record.error = {
                "code": "server_error",
                "message": "Fine-tuning job failed due to an internal error (emulated fault). Please retry the job.",
                "param": None,
            }
            self._event(record, FAIL_AT, record.error["message"], level="error")
            self.on_fault()
            return
        name = self._model_name(record)
        record.fine_tuned_model = name
        record.trained_tokens = (
            record.dataset.tokens if record.dataset else 0
        ) * record.hyperparameters["n_epochs"]
        record.status = "succeeded"
        self.store.add_ft_model(FineTunedModel(name, record.model, end, record.id))

    def _results_file(self, record: JobRecord) -> str:
        out = io.StringIO()
        out.write("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n")
        for m in record.metrics:
            out.write(
                f"{int(m['step'])},{m['train_loss']},{m['train_accuracy']},{m['valid_loss']},{m['valid_mean_token_accuracy']}\n"
            )
        return self.store.add_file(
            "step_metrics.csv", "fine-tune-results", out.getvalue().encode("utf-8")
        ).id
