"""Estimates checked against the bill: the prompt tokens a service reports for an arm's requests
against the tokens `estimate` counts for the same requests.

`classify` watches the first answers of a chat arm (`TokenWatch`) and warns in one line when the
two differ by more than `TOLERANCE`; every answered item's figures go to arm.json as
`tokens_check` (`TokenCheck.record`), which the report prices and `estimate --calibrate ARM`
re-prices a planned experiment from. Pure arithmetic: no client, no file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .backends.base import Prediction
from .dataset.manifest import ManifestRow

FIRST = 20
"""Answers compared before the warning is decided (all of them when a run has fewer)."""
TOLERANCE = 0.05
"""A billed total more than this fraction away from the estimate is warned of."""


@dataclass(frozen=True)
class TokenCheck:
    """Billed against estimated tokens over a set of answered requests."""

    items: int
    """Answered requests with a reported usage (failed requests and answers without a usage
    are left out: there is nothing billed to compare)."""
    estimated_prompt: int
    billed_prompt: int
    estimated_completion: int
    """The estimate's answer tokens: each item's true label, as the arm asks for answers."""
    billed_completion: int

    @property
    def ratio(self) -> float | None:
        """Billed prompt tokens over estimated ones (None: nothing estimated)."""
        return self.billed_prompt / self.estimated_prompt if self.estimated_prompt else None

    @property
    def completion_ratio(self) -> float | None:
        if not self.estimated_completion:
            return None
        return self.billed_completion / self.estimated_completion

    def off(self, tolerance: float = TOLERANCE) -> bool:
        """The billed prompt tokens differ from the estimate by more than `tolerance`."""
        r = self.ratio
        return r is not None and abs(r - 1) > tolerance

    def record(self) -> dict[str, Any]:
        """arm.json's `tokens_check`."""
        ratio, cratio = self.ratio, self.completion_ratio
        return {
            "items": self.items,
            "estimated_prompt": self.estimated_prompt,
            "billed_prompt": self.billed_prompt,
            "ratio": None if ratio is None else round(ratio, 6),
            "estimated_completion": self.estimated_completion,
            "billed_completion": self.billed_completion,
            "completion_ratio": None if cratio is None else round(cratio, 6),
        }


EstimateFn = Callable[[ManifestRow], int]


def billed(prediction: Prediction) -> bool:
    """An answer whose usage the service reported (a request that failed bills nothing here)."""
    return prediction.error is None and prediction.usage.prompt_tokens > 0


def check_tokens(
    pairs: Iterable[tuple[ManifestRow, Prediction]], prompt: EstimateFn, completion: EstimateFn
) -> TokenCheck:
    """Sum the billed usage of the answered `(item, prediction)` pairs and the estimate of the
    same items (`prompt`, `completion`: the estimate of one item's request)."""
    n = ep = bp = ec = bc = 0
    for item, p in pairs:
        if not billed(p):
            continue
        n += 1
        ep += prompt(item)
        bp += p.usage.prompt_tokens
        ec += completion(item)
        bc += p.usage.completion_tokens
    return TokenCheck(n, ep, bp, ec, bc)


def mismatch_line(model: str, arm: str, check: TokenCheck) -> str:
    """The one-line warning for a check that is `off`."""
    ratio = check.ratio or 0.0
    requests = "request" if check.items == 1 else f"{check.items:,} requests"
    return (
        f"{model}: billed {check.billed_prompt:,} prompt tokens for the first {requests}, the "
        f"estimate says {check.estimated_prompt:,} ({(ratio - 1) * 100:+.1f}%): estimates for "
        f"this model are off; `estimate --calibrate {arm}` re-prices from what was billed"
    )


class TokenWatch:
    """Watches an arm's answers as they arrive and, once `first` of them are billed, compares
    them with the estimate and warns (through `say`) when they are off: once per run."""

    def __init__(
        self,
        model: str,
        arm: str,
        prompt: EstimateFn,
        completion: EstimateFn,
        say: Callable[[str], None] | None,
        first: int | None = None,
        tolerance: float | None = None,
    ) -> None:
        self.model, self.arm = model, arm
        self.prompt, self.completion = prompt, completion
        self.say = say
        self.first = FIRST if first is None else first
        self.tolerance = TOLERANCE if tolerance is None else tolerance
        self.seen: list[tuple[ManifestRow, Prediction]] = []
        self.result: TokenCheck | None = None
        """The check of the first answers, once decided."""

    @property
    def decided(self) -> bool:
        return self.result is not None

    def see(self, item: ManifestRow, prediction: Prediction) -> None:
        """One answer, as it arrives."""
        if self.decided or not billed(prediction):
            return
        self.seen.append((item, prediction))
        if len(self.seen) >= self.first:
            self.decide(self.seen)

    def decide(self, pairs: Iterable[tuple[ManifestRow, Prediction]]) -> TokenCheck | None:
        """Compare these answers (the first `first` billed ones are used) and warn if off."""
        if self.decided:
            return self.result
        chosen = [(it, p) for it, p in pairs if billed(p)][: self.first]
        if not chosen:
            return None
        self.result = check_tokens(chosen, self.prompt, self.completion)
        self.seen = []
        if self.result.off(self.tolerance) and self.say:
            self.say(mismatch_line(self.model, self.arm, self.result))
        return self.result


__all__ = [
    "FIRST",
    "TOLERANCE",
    "TokenCheck",
    "TokenWatch",
    "billed",
    "check_tokens",
    "mismatch_line",
]
