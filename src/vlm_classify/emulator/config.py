"""The emulator's settings: one typed object, resolved once by the CLI or built by tests."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..errors import UserError

DEFAULT_API_KEY = "sk-emulator"
"""A made-up key: the emulator never reads a real one from the environment."""

DEFAULT_BASE_MODELS: tuple[str, ...] = (
    "gpt-4o-2024-08-06",
    "gpt-4o",
    "gpt-4o-2024-11-20",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
)
DEFAULT_FINETUNABLE: tuple[str, ...] = (
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1-2025-04-14",
    "gpt-4.1",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano-2025-04-14",
)
"""Base models a fine-tuning job accepts. Azure takes a base model by its plain name too
(`gpt-4.1`: its fine-tuning guide creates jobs on `gpt-4.1-mini`); which of them train on
images is the price table's `finetune_images` (`pricing.image_finetune_problem`)."""
FT_MARKER = "ft"
"""A `deployments` value that marks a deployment as some fine-tuned model."""

CHAT_FAULTS = ("429", "500", "503", "timeout", "drop")
"""Fault kinds drawn per chat request, in the order they are tried."""


class FaultRates(BaseModel):
    """Fractions of requests that fail on purpose, each drawn deterministically."""

    rate_429: float = Field(default=0.0, ge=0, le=1)
    """Chat requests answered 429 with `retry-after` and `retry-after-ms` headers."""
    rate_500: float = Field(default=0.0, ge=0, le=1)
    """Chat requests answered 500 with an error body."""
    rate_503: float = Field(default=0.0, ge=0, le=1)
    """Chat requests answered 503 (overloaded) with an error body."""
    timeout: float = Field(default=0.0, ge=0, le=1)
    """Chat requests held `timeout_hold` seconds, then closed without an answer."""
    drop: float = Field(default=0.0, ge=0, le=1)
    """Chat requests whose connection is closed without any response."""
    ft_fail: float = Field(default=0.0, ge=0, le=1)
    """Fine-tuning jobs that fail while running (a fraction of jobs, not of requests)."""

    @model_validator(mode="after")
    def _total(self) -> FaultRates:
        if self.chat_total() > 1:
            raise ValueError("the chat fault fractions add up to more than 1")
        return self

    def chat_rates(self) -> list[tuple[str, float]]:
        """`(kind, fraction)` for each chat fault kind, in drawing order."""
        return list(
            zip(
                CHAT_FAULTS,
                (self.rate_429, self.rate_500, self.rate_503, self.timeout, self.drop),
                strict=True,
            )
        )

    def chat_total(self) -> float:
        """The fraction of chat requests that get some fault."""
        return self.rate_429 + self.rate_500 + self.rate_503 + self.timeout + self.drop


_FAULT_KEYS = {
    "429": "rate_429",
    "500": "rate_500",
    "503": "rate_503",
    "timeout": "timeout",
    "drop": "drop",
    "ft_fail": "ft_fail",
}


def parse_faults(text: str | None) -> FaultRates:
    """Parse `429=0.1,500=0.05,timeout=0.02,drop=0.01,ft_fail=1` (empty: no faults).

    Any mistake is one UserError line naming the fix.
    """
    if not text or not text.strip():
        return FaultRates()
    values: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _FAULT_KEYS:
            raise UserError(
                f"--faults: cannot read {item!r}; write KIND=FRACTION pairs separated by commas, "
                f"KIND one of {', '.join(_FAULT_KEYS)} (e.g. 429=0.1,drop=0.01)"
            )
        try:
            value = float(raw)
        except ValueError:
            raise UserError(
                f"--faults: {key}={raw.strip()!r} is not a number; use a fraction between 0 and 1"
            ) from None
        if not 0 <= value <= 1:
            raise UserError(
                f"--faults: {key}={value} is outside 0..1; use a fraction (0.05 for 5%)"
            )
        if _FAULT_KEYS[key] in values:
            raise UserError(f"--faults: {key} is given twice; give each kind once")
        values[_FAULT_KEYS[key]] = value
    try:
        return FaultRates(**values)
    except ValidationError:
        raise UserError(
            "--faults: the chat fault fractions add up to more than 1; lower them"
        ) from None


class EmulatorConfig(BaseModel):
    """Everything the emulator needs; defaults suit a quick interactive demo."""

    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=0, ge=0, le=65535)
    """TCP port; 0 picks a free one (the Python API's default)."""
    api_key: str = DEFAULT_API_KEY
    """The only key accepted (as `Authorization: Bearer` or Azure's `api-key` header)."""
    manifests: list[Path] = Field(default_factory=list)
    """Prepared directories (or their manifest.csv) giving each image's ground-truth label."""
    accuracy: float = Field(default=0.74, ge=0, le=1)
    """Share of known images a base model labels correctly."""
    ft_accuracy: float = Field(default=0.83, ge=0, le=1)
    """Share of known images a fine-tuned model labels correctly."""
    model_accuracy: dict[str, float] = Field(default_factory=dict)
    """Per-model (or per-deployment) overrides of the accuracy, e.g. `{"gpt-4o-mini": 0.6}`."""
    invalid_rate: float = Field(default=0.02, ge=0, le=1)
    """Share of free-text answers that come back messy (a sentence, fenced JSON, empty...)."""
    class_effect: float = Field(default=0.25, ge=0, le=1)
    """Share of an image's difficulty that comes from its class (some classes are harder)."""
    kind_correlation: float = Field(default=0.6, ge=0, le=1)
    """How much base and fine-tuned models agree on which images are hard (0: independent)."""
    seed: int = 0
    """Drives every deterministic choice: answers, faults, latencies, ids."""
    latency_profile: Path | None = None
    """CSV with a `latency_ms` column (and optionally `model`: base / fine_tuned) to replay."""
    latency_scale: float = Field(default=1.0, ge=0)
    """Multiplies every replayed latency (0.01 replays a 1.6 s request in 16 ms)."""
    faults: FaultRates = Field(default_factory=lambda: FaultRates())
    """Injected failures; see `parse_faults`."""
    retry_after_ms: int = Field(default=200, ge=0)
    """What a 429 asks the client to wait (`retry-after-ms`; `retry-after` is rounded up)."""
    timeout_hold: float = Field(default=30.0, ge=0)
    """Seconds a `timeout` fault holds the request before closing it unanswered."""
    batch_seconds: float = Field(default=10.0, ge=0)
    """Time from creating a batch to its completion."""
    batch_fail_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of batch lines that fail (500) into the error file."""
    ft_seconds: float = Field(default=30.0, ge=0)
    """Time from creating a fine-tuning job to its success."""
    min_training_examples: int = Field(default=10, ge=1)
    """Fewer examples in a training file fail the job, as the service does."""
    organization: str = "emulated"
    """Organization part of fine-tuned model names (`ft:<base>:<org>:<suffix>:<id>`)."""
    base_models: list[str] = Field(default_factory=lambda: list(DEFAULT_BASE_MODELS))
    """Models listed by `/models`; other names not starting with `ft:` are served as base models too."""
    finetunable_models: list[str] = Field(default_factory=lambda: list(DEFAULT_FINETUNABLE))
    """Base models a fine-tuning job accepts."""
    deployments: dict[str, str] = Field(default_factory=dict)
    """Azure deployment -> model. A value of `ft` (or a fine-tuned model id) makes it fine-tuned;
    unlisted deployments are served as base models, or as the fine-tuned model of that name."""
    bill_factor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Bill chat prompt tokens this many times what the token rules count (1.2: 20% more, as a
    service billing images above its documented rule would): tests the warning for usage billed
    above the estimate. 1.0 bills exactly the estimate's count."""
    check_responses: bool = False
    """Validate every JSON response against the spec and record mismatches in `stats` (tests)."""

    @field_validator("faults", mode="before")
    @classmethod
    def _faults_text(cls, value: object) -> object:
        """Also accept the CLI's text form, `429=0.1,drop=0.01`."""
        return parse_faults(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> EmulatorConfig:
        bad = {k: v for k, v in self.model_accuracy.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"model_accuracy values must be within 0..1: {bad}")
        return self


def parse_pairs(items: list[str] | tuple[str, ...], option: str) -> dict[str, str]:
    """`NAME=VALUE` strings (a repeatable CLI option) as a dict; a malformed one is a UserError."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"{option}: {item!r} is not NAME=VALUE; e.g. {option} gpt-4o-ft=ft")
        out[name.strip()] = value.strip()
    return out
