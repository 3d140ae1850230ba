"""Stop paying once the answer is clear: an anytime-valid confidence sequence for the paired
accuracy difference of two arms, and the stopping rule `classify --until-decided` uses.

The items are answered in a seeded random order, so the paired differences
D_i = correct_arm(i) - correct_against(i), in {-1, 0, 1}, are draws without replacement from the
test split; their mean estimates the accuracy difference on it. We use the predictable plug-in
empirical-Bernstein confidence sequence of Waudby-Smith and Ramdas, "Estimating means of bounded
random variables by betting", JRSSB 86(1), 2024, Theorem 2 (eq. 13 to 15), on X_i = (D_i + 1)/2
in [0, 1]. With probability at least 1 - alpha it holds for every t at once, so the interval may
be checked after every answer and the run stopped whenever it decides, without inflating the
error (unlike a fixed-n interval looked at repeatedly). Sampling without replacement only makes
it conservative (the same paper, section 6).

The rule: stop when the interval excludes 0 (a difference, its sign known) or lies inside
(-margin, +margin) (no difference that matters), or when the split is used up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CLIP = 0.5
"""Largest bet lambda_t (the paper suggests 1/2 or 3/4)."""


@dataclass(frozen=True)
class Interval:
    """The confidence sequence after t pairs, on the difference scale [-1, 1]."""

    t: int
    low: float
    high: float
    estimate: float

    def decided(self, margin: float) -> str | None:
        """`better`, `worse`, `equivalent` (inside +-margin) or None (keep going)."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        if margin > 0 and -margin < self.low and self.high < margin:
            return "equivalent"
        return None


def confidence_sequence(diffs: Sequence[int | float], alpha: float = 0.05) -> list[Interval]:
    """The PrPl-EB interval after each of the paired differences in `diffs` (each in [-1, 1])."""
    log_term = math.log(2 / alpha)
    out: list[Interval] = []
    sum_x = 0.0
    sum_sq = 0.0  # sum (x_i - mu_hat_i)^2, for sigma_hat
    mu_prev, var_prev = 0.5, 0.25  # mu_hat_0 and sigma_hat^2_0
    sum_lam = sum_lam_x = sum_psi = 0.0
    for t, d in enumerate(diffs, start=1):
        x = (float(d) + 1) / 2
        lam = min(math.sqrt(2 * log_term / (var_prev * t * math.log(1 + t))), CLIP)
        v = 4 * (x - mu_prev) ** 2
        psi = (-math.log(1 - lam) - lam) / 4
        sum_lam += lam
        sum_lam_x += lam * x
        sum_psi += v * psi
        centre = sum_lam_x / sum_lam
        half = (log_term + sum_psi) / sum_lam
        low, high = max(0.0, centre - half), min(1.0, centre + half)
        sum_x += x
        mu = (0.5 + sum_x) / (t + 1)
        sum_sq += (x - mu) ** 2
        mu_prev, var_prev = mu, (0.25 + sum_sq) / (t + 1)
        out.append(Interval(t, 2 * low - 1, 2 * high - 1, 2 * centre - 1))
    return out


def stopping_time(
    diffs: Sequence[int | float], alpha: float = 0.05, margin: float = 0.0
) -> tuple[int, str | None, Interval | None]:
    """The first t at which the sequence decides (t, decision, interval); (len, None, last)
    when it never does."""
    last = None
    for interval in confidence_sequence(diffs, alpha):
        last = interval
        decision = interval.decided(margin)
        if decision:
            return interval.t, decision, interval
    return len(diffs), None, last


__all__ = ["Interval", "confidence_sequence", "stopping_time"]
