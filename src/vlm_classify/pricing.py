"""Prices are data: the shipped table (`data/pricing.json`), a user override, one cost function."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .image_rules import GPT4O_VISION, VisionRule
from .lifecycle import ArmKind, Lifecycle
from .lifecycle import warnings as _lifecycle_warnings
from .models import parse_model

CostMode = Literal["realtime", "batch", "finetuned"]
COST_MODES: tuple[CostMode, ...] = ("realtime", "batch", "finetuned")

PRICING_DOC = "docs/pricing.md"


class PriceEntry(BaseModel):
    """The prices of one model (or family of deployments), with where they come from."""

    model_config = ConfigDict(extra="forbid")

    key: str = ""
    """The table key, e.g. `azure/gpt-4o-2024-08-06` (filled in from the table)."""
    match: list[str] = Field(default_factory=list)
    """fnmatch patterns on the `provider/model` string; the key itself always matches."""
    source: str
    """Where the prices come from: a URL, or `original study`."""
    date: str
    """When the prices were read from the source (YYYY-MM or YYYY-MM-DD)."""
    input_per_1m: float = Field(ge=0)
    """USD per 1M input tokens, realtime."""
    output_per_1m: float = Field(ge=0)
    """USD per 1M output tokens, realtime."""
    batch_input_per_1m: float | None = Field(default=None, ge=0)
    """USD per 1M input tokens through the Batch API; null when Batch is not offered."""
    batch_output_per_1m: float | None = Field(default=None, ge=0)
    """USD per 1M output tokens through the Batch API."""
    training_per_1m: float | None = Field(default=None, ge=0)
    """USD per 1M training tokens (examples x epochs); null when the model cannot be fine-tuned."""
    hosting_per_hour: float = Field(default=0.0, ge=0)
    """USD per hour while a fine-tuned deployment exists (Azure); 0 at OpenAI."""
    finetuned_input_per_1m: float | None = Field(default=None, ge=0)
    """USD per 1M input tokens sent to the fine-tuned model."""
    finetuned_output_per_1m: float | None = Field(default=None, ge=0)
    """USD per 1M output tokens from the fine-tuned model."""
    vision: VisionRule = Field(default_factory=lambda: GPT4O_VISION.model_copy())
    """How this model counts image tokens: a `tile` rule (gpt-4o's when the entry names none)
    or a `patch` rule (see `image_rules`)."""
    finetune_images: bool | None = None
    """Whether this provider fine-tunes the model on training examples with images; null:
    not recorded. False leaves the training and fine-tuned lines out of an estimate."""
    finetune_source: str = ""
    """Where `finetune_images` comes from (a URL)."""
    notes: str = ""
    """Anything a reader of an estimate should know about these prices."""
    lifecycle: Lifecycle = Field(default_factory=lambda: Lifecycle())
    """Known retirement dates (deprecation, shutdown, end of fine-tuning, Azure deployment
    retirement), each with its source: see `lifecycle_warnings`."""

    def matches(self, model: str) -> bool:
        """Whether `model` (`provider/model`) is priced by this entry."""
        return model == self.key or any(fnmatch.fnmatchcase(model, p) for p in self.match)


class PriceTable(BaseModel):
    """Entries in lookup order: a user file's entries first, then the shipped ones."""

    entries: list[PriceEntry]

    def lookup(self, model: str) -> PriceEntry:
        """The first entry that matches `model`; an unknown model is a `UserError`."""
        parse_model(model)
        for entry in self.entries:
            if entry.matches(model):
                return entry
        raise UserError(
            f"no price for {model}: pass --pricing FILE with an entry for it (see {PRICING_DOC})"
        )


def _read_table_json(path: Path | None) -> dict[str, Any]:
    """The raw `{"models": {...}}` object of the shipped table (None) or a user file."""
    if path is None:
        text = (resources.files("vlm_classify") / "data" / "pricing.json").read_text("utf-8")
        return json.loads(text)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pricing file {path} not found: pass an existing JSON file to --pricing")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(
                f"{path} is YAML but PyYAML is not installed: pip install pyyaml, or write JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(
                f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix it"
            ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): fix it"
            ) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError(
            f'{path} has no "models" object: write {{"models": {{"provider/model": {{...}}}}}} '
            f"(see {PRICING_DOC})"
        )
    return data


def _kind(rule: dict[str, Any], default: dict[str, Any] | None = None) -> str:
    """The kind of a vision rule written as JSON (`tile` unless it says otherwise)."""
    return str(rule.get("kind", (default or {}).get("kind", "tile")))


def _entries(raw: dict[str, Any], where: str, base: dict[str, dict[str, Any]]) -> list[PriceEntry]:
    entries = []
    for key, fields in raw["models"].items():
        if not isinstance(fields, dict):
            raise UserError(f"{where}: entry {key!r} is not an object (see {PRICING_DOC})")
        # An entry whose key is in the shipped table changes only the fields it names.
        merged = {**base.get(key, {}), **fields, "key": key}
        # ...and inside `vision` and `lifecycle`, only the keys it names (a lifecycle date is
        # replaced whole: a new date needs its own source; a vision rule of another kind too).
        for sub in ("vision", "lifecycle"):
            if isinstance(fields.get(sub), dict) and isinstance(base.get(key, {}).get(sub), dict):
                if sub == "vision" and _kind(fields[sub], base[key][sub]) != _kind(base[key][sub]):
                    continue
                merged[sub] = {**base[key][sub], **fields[sub]}
        try:
            entries.append(PriceEntry.model_validate(merged))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "entry"
            raise UserError(
                f"{where}: entry {key!r}, {loc}: {err['msg']} (see {PRICING_DOC})"
            ) from None
    return entries


def load_pricing(path: Path | None = None) -> PriceTable:
    """The shipped table, extended and overridden by the user file at `path` (JSON, or YAML).

    A user entry with a shipped key changes just the fields it names; any other user entry is
    new. User entries are matched before shipped ones, so a user pattern wins.
    """
    shipped_raw = _read_table_json(None)
    shipped = _entries(shipped_raw, "shipped pricing.json", {})
    if path is None:
        return PriceTable(entries=shipped)
    user = _entries(_read_table_json(path), str(path), shipped_raw["models"])
    overridden = {e.key for e in user}
    return PriceTable(entries=[*user, *(e for e in shipped if e.key not in overridden)])


def lookup(model: str, pricing: Path | PriceTable | None = None) -> PriceEntry:
    """The price entry for `provider/model` from the shipped table or `pricing` (a file or table)."""
    table = pricing if isinstance(pricing, PriceTable) else load_pricing(pricing)
    return table.lookup(model)


PROVIDER_NAMES = {"openai": "OpenAI", "azure": "Azure OpenAI"}
VISION_FINETUNABLE = {
    "openai": ("gpt-4o-2024-08-06",),
    "azure": ("gpt-4o-2024-08-06", "gpt-4.1-2025-04-14"),
}
"""Base models each provider fine-tunes on images, by its vision fine-tuning guide (OpenAI's
names gpt-4o-2024-08-06 only; Azure's, gpt-4o 2024-08-06 and gpt-4.1 2025-04-14): named when a
model is refused. Which models are refused is the price table's `finetune_images`."""


def image_finetune_problem(model: str, pricing: Path | PriceTable | None = None) -> str | None:
    """Why `model` (`provider/model`) cannot be fine-tuned on images, by its price entry's
    `finetune_images: false` (None: it can, or the table does not say). `finetune` refuses such a
    model before uploading anything; the emulator refuses its jobs the same way."""
    try:
        entry = lookup(model, pricing)
    except UserError:
        return None
    if entry.finetune_images is not False:
        return None
    provider = model.partition("/")[0]
    takes = " or ".join(f"{provider}/{m}" for m in VISION_FINETUNABLE.get(provider, ()))
    where = f" ({entry.finetune_source})" if entry.finetune_source else ""
    return (
        f"{model} cannot be fine-tuned on images at {PROVIDER_NAMES.get(provider, provider)}"
        f"{where}: fine-tune {takes or 'another model'} instead"
    )


def current_date() -> dt.date:
    """The day lifecycle dates are measured from (tests replace it)."""
    return dt.date.today()


def lifecycle_warnings(
    model: str,
    kind: ArmKind | None = None,
    *,
    pricing: Path | PriceTable | None = None,
    today: dt.date | None = None,
    months: float = 12,
    name: str | None = None,
) -> list[str]:
    """Retirement warnings for `model` (`provider/model`, looked up like its prices): one line
    per lifecycle date that is past or within `months` of `today` (default: `current_date()`).

    `kind` is the arm: `zero-shot` (the model must answer), `fine-tuned` (training must be open
    and the fine-tune must answer), or None for both. A model the table does not price has no
    dates: no warnings. `name` is shown instead of `model` (e.g. the fine-tuned model's id).
    """
    table = pricing if isinstance(pricing, PriceTable) else load_pricing(pricing)
    try:
        entry = table.lookup(model)
    except UserError:
        return []
    return _lifecycle_warnings(
        entry.lifecycle,
        provider=entry.key.partition("/")[0],
        name=name or model,
        kind=kind,
        today=today or current_date(),
        months=months,
    )


def _per_1m(entry: PriceEntry, mode: CostMode) -> tuple[float, float]:
    if mode == "realtime":
        return entry.input_per_1m, entry.output_per_1m
    if mode == "batch":
        pin, pout = entry.batch_input_per_1m, entry.batch_output_per_1m
    elif mode == "finetuned":
        pin, pout = entry.finetuned_input_per_1m, entry.finetuned_output_per_1m
    else:
        raise ValueError(f"unknown cost mode {mode!r}; choose one of {', '.join(COST_MODES)}")
    if pin is None or pout is None:
        raise UserError(
            f"{entry.key} has no {mode} price: add {mode}_input_per_1m and {mode}_output_per_1m "
            f"with --pricing FILE (see {PRICING_DOC})"
        )
    return pin, pout


def cost_usd(
    input_tokens: int, output_tokens: int, entry: PriceEntry, mode: CostMode = "realtime"
) -> float:
    """USD for `input_tokens` in and `output_tokens` out at `entry`'s `mode` prices."""
    pin, pout = _per_1m(entry, mode)
    return (input_tokens * pin + output_tokens * pout) / 1_000_000


def training_cost_usd(training_tokens: int, entry: PriceEntry) -> float:
    """USD for a fine-tuning job that trains on `training_tokens` (examples x epochs)."""
    if entry.training_per_1m is None:
        raise UserError(
            f"{entry.key} has no training price: add training_per_1m with --pricing FILE "
            f"(see {PRICING_DOC})"
        )
    return training_tokens * entry.training_per_1m / 1_000_000
