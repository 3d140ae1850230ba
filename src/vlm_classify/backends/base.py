"""The narrow interfaces every arm implements: a remote model classifies one item and returns one
`Prediction` (`Backend`); a local model classifies a batch of items (`LocalBackend`).

Retries, concurrency, rate limits, batching, persistence and cost live once, in `runner.py`,
around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from ..dataset.manifest import ManifestRow
from ..prompts import PromptStyle

LocalAnswer = Literal["score", "text"]


@dataclass(frozen=True)
class Usage:
    """Tokens billed for one request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Prediction:
    """One item's outcome, normalised across backends and modes (realtime or batch)."""

    prediction: str | None
    """The parsed label, or None when the answer was not a valid label."""
    raw_answer: str
    """The model's text as received (empty when there was none)."""
    valid: bool
    confidence: float | None = None
    """Probability of the chosen label when the backend exposes one (logprobs, softmax)."""
    latency_ms: float | None = None
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    """Why the request failed for good; None on success (an invalid answer is not an error)."""
    scores: dict[str, float] | None = None
    """The full class distribution (label -> probability, summing to 1) when the model gives
    one (a local classifier's softmax); None for a model that answers with one label."""


class Backend(Protocol):
    """What an arm's backend provides."""

    name: str

    async def classify(self, item: ManifestRow) -> Prediction:
        """Classify one item once. Raise to signal a failure; the runner decides about retries."""
        ...

    def release(self, item: ManifestRow) -> None:
        """Forget what was kept for the item's retries (its encoded image): the runner calls it
        once the item is final, answered or recorded with an error."""
        ...

    async def aclose(self) -> None:
        """Release clients and files."""
        ...


class LocalSettings(BaseModel):
    """How a local model runs; saved with the arm."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """`auto`: CUDA when there is a GPU, else Apple's MPS, else the CPU."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Images per forward pass."""
    offline: bool = False
    """Use local files only (also when `HF_HUB_OFFLINE=1`): a missing file is one clear line."""
    workers: int = Field(0, ge=0, le=64)
    """Processes decoding images alongside the model (0: in the main process)."""
    templates: Path | None = None
    """`clip/` zero-shot: a JSON file of prompt templates replacing the shipped ones."""
    prompt: PromptStyle | None = None
    """`hf/`: the prompt style (None: the one a trained adapter was trained with, else `full`)."""
    answer: LocalAnswer = "score"
    """`hf/`: `score` every label's likelihood (a distribution, always a valid label) or
    generate `text` and parse it as the cloud arms do."""
    label_batch: int = Field(128, ge=1, le=4096)
    """`hf/` label scoring: labels scored per pass from one image's cache (packed in one row)."""
    max_new_tokens: int = Field(20, ge=1, le=4096)
    """`hf/` with `answer=text`: the longest answer generated."""
    cpu_price_per_hour: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD an hour of this machine's CPU time: recorded, for the report's cost by compute time."""
    gpu_price_per_hour: float | None = Field(None, ge=0, allow_inf_nan=False)
    """USD an hour of its GPU (cuda or mps): recorded likewise."""

    def price_per_hour(self, device: str) -> float | None:
        """The recorded hourly price of `device` (`cpu`, `cuda:0`, `mps`)."""
        return self.cpu_price_per_hour if device.split(":")[0] == "cpu" else self.gpu_price_per_hour


class LocalBackend(Protocol):
    """A model that runs here: a batch of images in, a batch of class distributions out.

    The runner (`run_local`) feeds it the items not yet answered, in batches, and persists each
    batch as it comes back; resume, arm records and the report are shared with remote arms.
    """

    name: str
    device: str
    """Where it runs, as torch names it (`cpu`, `cuda:0`, `mps`)."""

    def classify_batch(self, items: Sequence[ManifestRow]) -> list[Prediction]:
        """One prediction per item, in order, each with its full class distribution."""
        ...

    def gpu_peak_mb(self) -> float | None:
        """Peak GPU memory this backend allocated, in MB (None on the CPU)."""
        ...

    def versions(self) -> dict[str, str]:
        """The versions of the libraries that ran the model (torch, open_clip, timm...)."""
        ...

    def close(self) -> None:
        """Free the model (and GPU memory)."""
        ...


def prediction_from_scores(labels: Sequence[str], probs: Sequence[float]) -> Prediction:
    """A local classifier's answer: the most probable label, its probability as confidence and
    the whole distribution (rounded to 6 digits, as predictions.csv keeps it)."""
    if len(probs) != len(labels) or not labels:
        raise ValueError(f"{len(probs)} scores for {len(labels)} labels")
    best = max(range(len(labels)), key=lambda i: probs[i])
    return Prediction(
        prediction=labels[best],
        raw_answer=labels[best],
        valid=True,
        confidence=float(probs[best]),
        scores={lb: round(float(p), 6) for lb, p in zip(labels, probs, strict=True)},
    )
