"""The one narrow interface every arm implements: classify one item, return one `Prediction`.

Retries, concurrency, rate limits, persistence and cost live once, in `runner.py`, around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..dataset.manifest import ManifestRow


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
