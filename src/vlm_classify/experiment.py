"""One experiment file, validated as a whole: the dataset, the arms (zero-shot, fine-tuned, local),
the latency study and the report, in TOML.

`load_experiment(path)` reads and checks it before anything runs: an unknown key, a wrong type or
a reference to an arm that does not exist is one line naming the file, the line and the fix.
`plan.py` turns it into steps; `run.py` runs them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .arms import check_arm_name
from .backends.base import LocalAnswer
from .backends.openai.wire import AnswerMode, Detail
from .curve import DEFAULT_SHOTS
from .errors import UserError
from .prompts import PromptStyle

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """`[dataset]`: what `prepare` samples, from where."""

    source: str
    """A class-per-folder tree (a path, relative to the experiment file), `stanford-dogs` (the
    real dataset, downloaded once), or `generated` (a Stanford-Dogs-shaped sample made here)."""
    per_class: int | None = Field(None, ge=1)
    split: tuple[int, int, int] | None = None
    """Images per class for train, val and test."""
    sampling: Literal["first", "random"] = "first"
    seed: int = Field(42, ge=0)
    max_side: int = Field(512, ge=16)
    strict: bool = True
    """A class with fewer usable images than the split needs stops the run, before anything is
    uploaded (false: keep what it has, filling test first, with a warning)."""
    classes: int | None = Field(None, ge=2)
    """`generated` only: how many breeds."""
    images_per_class: int | None = Field(None, ge=1)
    """`generated` only: images written per breed (default: per_class, or the split's sum)."""

    @model_validator(mode="after")
    def _generated_only(self) -> DatasetSpec:
        if self.source != "generated" and (self.classes or self.images_per_class):
            raise ValueError('classes and images_per_class are for source = "generated"')
        return self


class FinetuneSpec(_Strict):
    """An arm's `finetune = { from = ..., ... }`: the job whose model the arm evaluates."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    base: str = Field(alias="from")
    """The base model: `openai/...`, `azure/...` (the fine-tuning API) or `clip/`, `cnn/`, `hf/`
    (trained here)."""
    epochs: int | Literal["auto"] | None = None
    lr_multiplier: float | Literal["auto"] | None = None
    batch_size: int | Literal["auto"] | None = None
    lr: float | None = Field(None, gt=0)
    lora_rank: int | None = Field(None, ge=1)
    seed: int = 42
    suffix: str | None = None
    prompt: PromptStyle | None = None
    detail: Detail | None = None


class DeploySpec(_Strict):
    """An Azure fine-tune's `deploy = { deployment = ..., ... }` (see `vlm-classify deploy`)."""

    deployment: str
    subscription: str | None = None
    resource_group: str | None = None
    account: str | None = None
    sku: str | None = None
    """`standard`, `globalstandard` or `developertier`; None: globalstandard for gpt-4.1,
    standard for gpt-4o (`deploy.resolve_sku`)."""
    capacity: int = Field(1, ge=1)


class ArmSpec(_Strict):
    """`[[arm]]`: one column of the report."""

    name: str
    model: str | None = None
    """The model classified, `PROVIDER/MODEL`; or give `finetune` instead."""
    finetune: FinetuneSpec | None = None
    deploy: DeploySpec | None = None
    mode: Literal["realtime", "batch"] = "realtime"
    split: Literal["train", "val", "test"] = "test"
    prompt: PromptStyle | None = None
    answer: AnswerMode | LocalAnswer | None = None
    detail: Detail = "low"
    logprobs: bool = True
    concurrency: int = Field(8, ge=1, le=1024)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    limit: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    offline: bool = False
    """Local models: local files and the hub's cache only."""
    batch_size: int | None = Field(None, ge=1)
    cpu_price_per_hour: float | None = Field(None, ge=0)
    gpu_price_per_hour: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_model(self) -> ArmSpec:
        check_arm_name(self.name)
        if (self.model is None) == (self.finetune is None):
            raise ValueError(
                'give an arm either model = "PROVIDER/MODEL" or finetune = { from = ... }'
            )
        if self.deploy is not None and not (
            self.finetune is not None and self.finetune.base.startswith("azure/")
        ):
            raise ValueError(
                'deploy is for an arm fine-tuned on Azure (finetune = { from = "azure/..." })'
            )
        return self

    @property
    def provider(self) -> str:
        return (self.model or (self.finetune.base if self.finetune else "")).partition("/")[0]


class LatencySpec(_Strict):
    """`[latency]`: the latency study of some arms (chat models)."""

    arms: list[str]
    requests: int = Field(600, ge=1)
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16])


class CurveSpec(_Strict):
    """`[curve]`: a learning curve (see `vlm-classify curve`), after the arms."""

    model: str
    name: str = "curve"
    shots: list[int | Literal["all"]] = Field(default_factory=lambda: list(DEFAULT_SHOTS))
    seed: int = 42
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    lora_rank: int | None = Field(None, ge=1)
    lr_multiplier: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    offline: bool = False
    cpu_price_per_hour: float | None = Field(None, ge=0)
    gpu_price_per_hour: float | None = Field(None, ge=0)
    yes: bool = False
    """A curve through the fine-tuning API costs money: it runs only with `yes = true` (see its
    cost with `--dry-run`)."""


class ReportSpec(_Strict):
    """`[report]`: how the decision report compares and prices the arms."""

    baseline: str | None = None
    volume: float = Field(10_000, gt=0)
    months: float = Field(12, ge=1)
    serving: Literal["realtime", "batch"] = "realtime"
    cpu_price_per_hour: float | None = Field(None, ge=0)
    gpu_price_per_hour: float | None = Field(None, ge=0)
    review_cost: float | None = Field(None, ge=0)
    """USD a person takes to check one image: the report's abstention threshold."""
    error_cost: float | None = Field(None, ge=0)
    """USD a wrong label that ships costs (needs review_cost)."""


class EmulatorSpec(_Strict):
    """`[emulator]`: run every cloud arm against the built-in emulator, started and stopped by the
    run (no key, no network). Its accuracies are settings, not measurements."""

    accuracy: float = Field(0.74, ge=0, le=1)
    ft_accuracy: float = Field(0.83, ge=0, le=1)
    latency_profile: str | None = None
    latency_scale: float = Field(1.0, ge=0)
    batch_seconds: float = Field(10.0, ge=0)
    ft_seconds: float = Field(30.0, ge=0)
    faults: str = ""
    seed: int = 0
    bill_factor: float = Field(1.0, gt=0, allow_inf_nan=False)
    """Bill prompt tokens this many times the token rules (1.2: 20% more): classify then warns
    that the estimate is off, and the report shows the difference."""


class Experiment(_Strict):
    """The whole experiment file."""

    out: str | None = None
    """Where the run writes (relative to the experiment file); `--out` overrides it."""
    dataset: DatasetSpec
    arm: list[ArmSpec] = Field(min_length=1)
    latency: LatencySpec | None = None
    curve: CurveSpec | None = None
    report: ReportSpec = Field(default_factory=ReportSpec)
    emulator: EmulatorSpec | None = None

    @model_validator(mode="after")
    def _references(self) -> Experiment:
        names = [a.name for a in self.arm]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"arm name {twice[0]!r} is used twice: each arm needs its own name")
        known = set(names)
        for name in self.latency.arms if self.latency else []:
            if name not in known:
                raise ValueError(f"[latency] names arm {name!r}, which no [[arm]] defines")
        if self.report.baseline is not None and self.report.baseline not in known:
            raise ValueError(f"[report] baseline {self.report.baseline!r} is not an [[arm]] name")
        return self


def load_experiment(path: Path) -> tuple[Experiment, str]:
    """The experiment in `path` and its text; any mistake is one line with the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such experiment file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    try:
        return Experiment.model_validate(data), text
    except ValidationError as e:
        raise UserError(_one_error(path, text, e)) from None


def _one_error(path: Path, text: str, error: ValidationError) -> str:
    """The first validation error as `file:line: what (fix)`."""
    first = error.errors()[0]
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
    line = _line_of(text, loc)
    where = f"{path}:{line}" if line else str(path)
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key!r}: remove it or check its spelling (see examples/)"
    if kind == "missing":
        return f"{where}: {key} is required"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {key}: {message}"


_UNION_TAGS = {"int", "float", "str", "literal['auto']", "constrained-float"}


def _line_of(text: str, loc: list[Any]) -> int | None:
    """The line where the key at `loc` is written (`["arm", 1, "finetune", "epochs"]`), or its
    table's header when the key is missing."""
    tables: list[tuple[str, int | None, int]] = []  # (table, array index, header line)
    counts: dict[str, int] = {}
    lines = text.splitlines()
    for no, raw in enumerate(lines, 1):
        stripped = raw.strip()
        m = re.match(r"^\[\[\s*([\w.-]+)\s*\]\]", stripped)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), -1) + 1
            tables.append((m.group(1), counts[m.group(1)], no))
            continue
        m = re.match(r"^\[\s*([\w.-]+)\s*\]", stripped)
        if m:
            tables.append((m.group(1), None, no))
    if not loc:
        return None
    head, rest = str(loc[0]), loc[1:]
    start, end = 1, len(lines)
    index = rest[0] if rest and isinstance(rest[0], int) else None
    if index is not None:
        rest = rest[1:]
    for i, (name, idx, no) in enumerate(tables):
        if name == head and (index is None or idx == index):
            start = no
            end = tables[i + 1][2] - 1 if i + 1 < len(tables) else len(lines)
            break
    else:
        if not tables or tables[0][2] > 1:  # a top-level key
            start, end = 1, (tables[0][2] - 1) if tables else len(lines)
            rest = [head, *rest]
    keys = [str(k) for k in rest if not isinstance(k, int)]
    for key in keys[:1]:
        for no in range(start, end + 1):
            if re.match(rf"^\s*{re.escape(key)}\s*=", lines[no - 1]):
                return no
    return start if start > 1 or tables else None


__all__ = [
    "ArmSpec",
    "DatasetSpec",
    "DeploySpec",
    "EmulatorSpec",
    "Experiment",
    "FinetuneSpec",
    "LatencySpec",
    "ReportSpec",
    "load_experiment",
]
