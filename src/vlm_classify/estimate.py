"""Offline cost estimate for a prepared dataset: Batch and realtime zero-shot, training, fine-tuned.

Tokens are counted from the manifest (labels, image sizes) with `tokens`, dollars come from the
price table with `pricing.cost_usd`; nothing touches the network.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .arms import arm_dir
from .backends.openai import tokens
from .backends.openai.wire import (
    AnswerMode,
    Detail,
    classification_messages,
    data_url_prefix,
    finetune_line,
)
from .dataset.manifest import ManifestRow, read_labels, read_manifest
from .errors import UserError
from .image_rules import describe
from .pricing import (
    PriceEntry,
    PriceTable,
    cost_usd,
    lifecycle_warnings,
    load_pricing,
    training_cost_usd,
)
from .prompts import PromptStyle, answer_schema, system_prompt

FINETUNED_ANSWER: AnswerMode = "text"
"""`openai_wire.finetune_line` makes the bare label the assistant target, so the fine-tuned
model answers with the bare label."""

_ADD = " (add it with --pricing FILE: see docs/pricing.md)"

_IMAGE_URL = data_url_prefix()
"""Image parts count 0 text tokens, so the URL does not matter here."""


class EstimateOptions(BaseModel):
    """What to estimate: which model and prices, and how requests and training lines are built."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """`provider/model` of the base model, e.g. `azure/gpt-4o-2024-08-06`."""
    epochs: int = Field(default=2, ge=1, le=50)
    """Fine-tuning epochs (the original study used 2)."""
    prompt: PromptStyle = "full"
    """System prompt of zero-shot requests: `full` lists every label, `short` does not."""
    training_prompt: PromptStyle | None = None
    """System prompt of the fine-tuning examples; None means the same as `prompt`. The
    fine-tuned model is then queried with this same prompt (train `short`, infer `short`)."""
    detail: Detail = "low"
    """Image detail of every request and training example; `auto` is counted as `high`."""
    answer: AnswerMode = "enum"
    """How the base model answers: `enum` = strict structured output `{"label":"..."}`,
    `text` = the bare label."""
    pricing: Path | None = None
    """A user price file that extends or overrides the shipped table."""
    months: float = Field(default=12, ge=1, allow_inf_nan=False)
    """Months over which the report spreads training: a retirement date within them is
    warned of (`lifecycle`)."""
    calibrate: str | None = None
    """An arm of the prepared directory, run on the same model: its requests' tokens are counted
    from what the service billed that arm (arm.json `tokens_check`) instead of the rule alone."""

    @property
    def ft_prompt(self) -> PromptStyle:
        """The prompt style of the fine-tuning examples and of the fine-tuned model's requests."""
        return self.training_prompt or self.prompt


class LineItem(BaseModel):
    """One priced piece of work."""

    requests: int
    """Requests (or training examples per epoch, for training)."""
    input_tokens: int
    """Prompt tokens: text, message overheads and images."""
    output_tokens: int
    """Answer tokens (for training: the assistant targets, billed as training tokens)."""
    cost_usd: float
    """Dollars at the price entry's rates for this kind of work."""
    note: str = ""

    @property
    def tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens


class TrainingItem(LineItem):
    """The fine-tuning job: every training example, once per epoch."""

    epochs: int
    examples: int
    """Training examples (the train split); validation examples are not billed."""
    tokens_per_example: float
    """Mean billed tokens of one example (system + image + target + message overheads)."""


class HostingItem(BaseModel):
    """Hosting a fine-tuned deployment: billed per hour while it exists, used or not."""

    usd_per_hour: float
    usd_per_day: float
    note: str = ""


class Calibration(BaseModel):
    """An arm's bill against the rule, applied to a plan's request tokens (`--calibrate ARM`)."""

    arm: str
    model: str
    """The model the arm ran (`provider/model`)."""
    items: int
    """Billed requests of the arm that were compared."""
    estimated_prompt: int
    billed_prompt: int
    prompt_ratio: float
    """Billed over estimated prompt tokens: every request's prompt tokens are the rule's count
    times this (for the arm's own requests: exactly what was billed)."""
    completion_ratio: float | None
    """The same for answer tokens (None: the arm had no estimated answer tokens)."""
    emulated: bool
    """The arm was answered by the built-in emulator: its bill is a setting, not a service's."""

    def note(self) -> str:
        c = self.completion_ratio
        answers = "" if c is None else f" and {c:.3f}x the answer tokens"
        return (
            f"calibrated from arm {self.arm} ({self.model}, {self.items:,} billed requests"
            f"{', emulated' if self.emulated else ''}): it was billed {self.prompt_ratio:.3f}x the "
            f"prompt tokens the rule counts ({self.billed_prompt:,} against "
            f"{self.estimated_prompt:,}){answers}; the zero-shot and fine-tuned request tokens "
            "here are the rule's counts times these (for the arm's own requests: its billed "
            "tokens per image); training stays by the rule (no training bill was compared)"
        )


class Estimate(BaseModel):
    """The cost estimate of one dataset and model; `to_json()` is the machine-readable form."""

    model: str
    price_key: str
    price_source: str
    price_date: str
    options: EstimateOptions
    splits: dict[str, int]
    """Images per split (train, val, test)."""
    batch: LineItem | None
    """Zero-shot base model on the test set through the Batch API (None: no Batch price)."""
    realtime: LineItem
    """Zero-shot base model on the test set, one realtime request per image."""
    training: TrainingItem | None
    """Fine-tuning on the train split (None: the model has no training price)."""
    finetuned: LineItem | None
    """The fine-tuned model on the test set, realtime (None: no fine-tuned price)."""
    hosting: HostingItem
    assumptions: list[str]
    lifecycle: list[str] = Field(default_factory=list)
    """Retirement warnings: a lifecycle date of the model that is past or within
    `options.months` (one line each, with its source)."""
    calibration: Calibration | None = None
    """`options.calibrate`: what the arm was billed against the rule's count."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: `{"training": {"tokens": ..., "cost_usd": ...}, "batch": ...}`."""

        def item(x: LineItem | None) -> dict[str, Any] | None:
            return None if x is None else {**x.model_dump(mode="json"), "tokens": x.tokens}

        return {
            "model": self.model,
            "price": {"key": self.price_key, "source": self.price_source, "date": self.price_date},
            "options": self.options.model_dump(mode="json"),
            "splits": dict(self.splits),
            "batch": item(self.batch),
            "realtime": item(self.realtime),
            "training": item(self.training),
            "finetuned": item(self.finetuned),
            "hosting": self.hosting.model_dump(mode="json"),
            "assumptions": list(self.assumptions),
            "lifecycle": list(self.lifecycle),
            "calibration": None
            if self.calibration is None
            else self.calibration.model_dump(mode="json"),
        }


def _request(system_text: str, detail: Detail) -> list[dict[str, Any]]:
    return classification_messages(system_text, _IMAGE_URL, detail)


def schema_tokens(labels: Sequence[str]) -> int:
    """Approximate prompt tokens of the label enum's structured-output schema."""
    return tokens.schema_tokens(answer_schema(list(labels))["schema"])


def _inference(
    rows: Sequence[ManifestRow],
    system_text: str,
    options: EstimateOptions,
    entry: PriceEntry,
    answer: AnswerMode,
    labels: Sequence[str],
) -> tuple[int, int]:
    """Input and output tokens of one request per row."""
    prompt = tokens.count_chat_tokens(_request(system_text, options.detail))
    if answer == "enum":
        prompt += schema_tokens(labels)
    images = sum(tokens.image_tokens(r.width, r.height, options.detail, entry.vision) for r in rows)
    answers = Counter(r.label for r in rows)
    output = sum(n * tokens.completion_tokens(label, answer) for label, n in answers.items())
    return prompt * len(rows) + images, output


def _calibrated(counts: tuple[int, int], c: Calibration | None) -> tuple[int, int]:
    """Input and output tokens scaled by an arm's bill (unchanged without one)."""
    if c is None:
        return counts
    tin, tout = counts
    return round(tin * c.prompt_ratio), round(tout * (c.completion_ratio or 1.0))


def calibration_from_arm(
    prepared_dir: Path, arm: str, entry: PriceEntry, table: PriceTable
) -> Calibration:
    """What arm `arm` of `prepared_dir` was billed against the rule (arm.json `tokens_check`);
    its model must be priced by `entry` (the same model, or a fine-tune of it)."""
    path = arm_dir(prepared_dir, arm) / "arm.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(
            f"--calibrate {arm}: no arm.json in {path.parent}: classify that arm first"
        ) from None
    model = str(doc.get("model") or "")
    check = doc.get("tokens_check")
    if not isinstance(check, dict) or not check.get("items") or not check.get("estimated_prompt"):
        raise UserError(
            f"--calibrate {arm}: arm {arm} has no billed usage to compare (arm.json has no "
            "tokens_check: a chat arm answered by OpenAI, Azure or the emulator records it); "
            "rerun classify on it"
        )
    keys = set()
    for name in (model, str((doc.get("fine_tune") or {}).get("base_model") or "")):
        if not name:
            continue
        try:
            keys.add(table.lookup(name).key)
        except UserError:
            continue
    if entry.key not in keys:
        raise UserError(
            f"--calibrate {arm}: that arm ran {model or 'an unknown model'}, not a model priced "
            f"as {entry.key}: calibrate with an arm of the model you estimate"
        )
    est, billed = int(check["estimated_prompt"]), int(check["billed_prompt"])
    est_out, billed_out = (
        int(check.get("estimated_completion") or 0),
        int(check.get("billed_completion") or 0),
    )
    return Calibration(
        arm=arm,
        model=model,
        items=int(check["items"]),
        estimated_prompt=est,
        billed_prompt=billed,
        prompt_ratio=billed / est,
        completion_ratio=billed_out / est_out if est_out else None,
        emulated=bool(doc.get("emulated")),
    )


def image_notes(entry: PriceEntry, detail: Detail) -> list[str]:
    """The estimate's notes on image tokens: which rule counts them, and where the sources of
    that rule disagree (and which value the table took)."""
    rule = entry.vision
    line = f"image tokens of {entry.key}: {describe(rule, detail)}"
    if "vision" not in entry.model_fields_set:
        line += "; the price entry names no image rule, so gpt-4o's tile rule is assumed"
    return [line, *(f"image-token sources disagree: {d}" for d in rule.disagreements)]


def _no_image_finetuning(entry: PriceEntry) -> str:
    """Why the training and fine-tuned lines are left out ('' when they are not)."""
    if entry.finetune_images is not False:
        return ""
    provider = {"openai": "OpenAI", "azure": "Azure OpenAI"}.get(
        entry.key.partition("/")[0], entry.key.partition("/")[0]
    )
    where = f" ({entry.finetune_source})" if entry.finetune_source else ""
    return (
        f"{entry.key} cannot be fine-tuned on images at {provider}{where}: training, "
        "fine-tuned and hosting lines omitted"
    )


def estimate(
    prepared_dir: Path, options: EstimateOptions, today: dt.date | None = None
) -> Estimate:
    """Estimate tokens and dollars for the dataset in `prepared_dir` under `options`; retirement
    dates are measured from `today` (default: the current date)."""
    table = load_pricing(options.pricing)
    entry = table.lookup(options.model)
    rows = read_manifest(prepared_dir)
    labels = read_labels(prepared_dir)
    by_split: dict[str, list[ManifestRow]] = {"train": [], "val": [], "test": []}
    for r in rows:
        by_split[r.split].append(r)
    train, test = by_split["train"], by_split["test"]
    base_system = system_prompt(labels, options.prompt)
    ft_system = system_prompt(labels, options.ft_prompt)
    assumptions = [
        f"prices: {entry.key}, {entry.source} ({entry.date})",
        "prompt tokens by the OpenAI cookbook rule for gpt-4o: 3 per message + role + content, "
        "+3 reply priming; o200k_base text tokens",
        *image_notes(entry, options.detail),
        f"system prompt '{options.prompt}': {tokens.count_text(base_system)} tokens",
    ]

    calibration = (
        calibration_from_arm(prepared_dir, options.calibrate, entry, table)
        if options.calibrate
        else None
    )
    if calibration is not None:
        assumptions.append(calibration.note())

    # Zero-shot base model on the test set: the same tokens realtime or through Batch.
    zin, zout = _calibrated(
        _inference(test, base_system, options, entry, options.answer, labels), calibration
    )
    if options.answer == "enum":
        assumptions.append(
            'base model answers as structured output {"label":"..."}; the response_format '
            f"schema adds about {schema_tokens(labels)} prompt tokens a request (its compact "
            "JSON: how the API renders it is not published, so this part is approximate)"
        )
    realtime = LineItem(
        requests=len(test),
        input_tokens=zin,
        output_tokens=zout,
        cost_usd=cost_usd(zin, zout, entry, "realtime"),
        note="zero-shot base model, test set, realtime",
    )
    batch = None
    if entry.batch_input_per_1m is not None and entry.batch_output_per_1m is not None:
        batch = LineItem(
            requests=len(test),
            input_tokens=zin,
            output_tokens=zout,
            cost_usd=cost_usd(zin, zout, entry, "batch"),
            note="zero-shot base model, test set, Batch API",
        )
    else:
        assumptions.append(f"no Batch price for {entry.key}: Batch line omitted{_ADD}")

    training = None
    no_finetune = _no_image_finetuning(entry)
    if no_finetune:
        assumptions.append(no_finetune)
    elif entry.training_per_1m is not None:
        if entry.finetune_images is None:
            assumptions.append(
                f"whether {entry.key} can be fine-tuned on images is not recorded in the price "
                "table: check your provider's fine-tuning guide"
            )
        tin = tout = 0
        target_counts = Counter(r.label for r in train)
        for label, n in target_counts.items():
            example = finetune_line(_request(ft_system, options.detail), label)
            whole = tokens.count_chat_tokens(example["messages"])
            out = tokens.completion_tokens(label, FINETUNED_ANSWER)
            tin += n * (whole - out)
            tout += n * out
        tin += sum(
            tokens.image_tokens(r.width, r.height, options.detail, entry.vision) for r in train
        )
        per_example = (tin + tout) / len(train) if train else 0.0
        tin, tout = tin * options.epochs, tout * options.epochs
        training = TrainingItem(
            requests=len(train),
            examples=len(train),
            epochs=options.epochs,
            tokens_per_example=per_example,
            input_tokens=tin,
            output_tokens=tout,
            cost_usd=training_cost_usd(tin + tout, entry),
            note=f"fine-tuning: {len(train)} train examples x {options.epochs} epochs",
        )
        assumptions.append(
            f"training tokens = train examples x epochs x (system + image + target + message "
            f"overheads, +3 priming as in the cookbook's fine-tuning data check); the "
            f"{len(by_split['val'])} validation examples are not billed"
        )
    else:
        assumptions.append(f"no training price for {entry.key}: training line omitted{_ADD}")

    finetuned = None
    ft_prices = (entry.finetuned_input_per_1m, entry.finetuned_output_per_1m)
    if no_finetune:
        pass  # said once, with the training line
    elif ft_prices[0] is not None and ft_prices[1] is not None:
        fin, fout = _calibrated(
            _inference(test, ft_system, options, entry, FINETUNED_ANSWER, labels), calibration
        )
        finetuned = LineItem(
            requests=len(test),
            input_tokens=fin,
            output_tokens=fout,
            cost_usd=cost_usd(fin, fout, entry, "finetuned"),
            note=f"fine-tuned model, test set, realtime, prompt '{options.ft_prompt}'",
        )
        assumptions.append(
            f"the fine-tuned model is queried with the training prompt '{options.ft_prompt}' "
            "and answers with the bare label it was trained on"
        )
    else:
        assumptions.append(
            f"no fine-tuned inference price for {entry.key}: fine-tuned line omitted{_ADD}"
        )

    hourly = 0.0 if no_finetune else entry.hosting_per_hour
    hosting = HostingItem(
        usd_per_hour=hourly,
        usd_per_day=hourly * 24,
        note=(
            "no fine-tuned deployment: the model cannot be fine-tuned on images here"
            if no_finetune
            else "billed per hour while the fine-tuned deployment exists, used or not"
            if entry.hosting_per_hour
            else "no hosting fee for fine-tuned models at this provider"
        ),
    )
    return Estimate(
        model=options.model,
        price_key=entry.key,
        price_source=entry.source,
        price_date=entry.date,
        options=options,
        splits={s: len(v) for s, v in by_split.items()},
        batch=batch,
        realtime=realtime,
        training=training,
        finetuned=finetuned,
        hosting=hosting,
        assumptions=assumptions,
        calibration=calibration,
        lifecycle=lifecycle_warnings(
            options.model,
            None if entry.training_per_1m is not None else "zero-shot",
            pricing=table,
            today=today,
            months=options.months,
        ),
    )
