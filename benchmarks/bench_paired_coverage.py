"""Benchmark the report's 95% intervals: how often they cover the truth on paired arms.

    python benchmarks/bench_paired_coverage.py [--draws 4000] [--resamples 2000] [--out DIR]

Simulates two arms answering the same n items with known accuracies over a grid (n items, the
baseline's accuracy, the true difference, the share of discordant items) and counts how often
each interval the report shows covers the truth: Tango's score interval of the difference (the
verdict's `delta_ci`), the paired percentile bootstrap (`delta_ci_bootstrap`), and the Wilson
interval of each arm's accuracy (`accuracy_ci`). For context only, the conditional Clopper-Pearson
interval the report used before is measured too (and Wilson is skipped for an arm whose true
accuracy is 1: every draw is then n of n). Each item falls in one of four cells (both
right, only the baseline right, only the arm right, both wrong), drawn from a multinomial with
the chosen marginals; cells the grid cannot reach (a negative share) are skipped.

The paired intervals depend on the data only through (fixed, broken, n), so each is computed once
per distinct table, with the library's own functions where it has them; the bootstrap resamples
(fixed, broken) from their multinomial, which is resampling items with pairs kept together. The
verdict's interval also gets its exact coverage (every table summed with its probability), which
has no Monte Carlo error. Prints the summary and exits 1 when the verdict's interval leaves
93.5-97% somewhere on the grid; writes coverage.md and cells.csv to --out.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from dataclasses import dataclass
from math import isnan
from pathlib import Path

import numpy as np
from scipy.special import gammaln, xlogy
from scipy.stats import beta

from vlm_classify.metrics import CONFIDENCE, accuracy_interval, tango_score_interval

ITEMS = (60, 100, 200, 300, 600)
BASELINES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DIFFERENCES = (-0.1, 0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
DISCORDANCE = (0.05, 0.1, 0.2, 0.3, 0.4)
"""Share of items the two arms disagree on (at least |difference|; equal: all one way)."""
TARGET = (0.935, 0.97)
"""The verdict's interval must cover the truth within this range in every cell."""
METHODS = {
    "tango": "Tango score (verdict, delta_ci)",
    "bootstrap": "paired bootstrap (delta_ci_bootstrap)",
    "wilson_base": "Wilson, baseline arm (accuracy_ci)",
    "wilson_arm": "Wilson, compared arm (accuracy_ci)",
    "former": "conditional Clopper-Pearson (former delta_ci, not shown)",
}


@dataclass(frozen=True)
class Cell:
    """One point of the grid: n items, the baseline's accuracy, the true difference, discordance."""

    n: int
    base: float
    delta: float
    discordance: float

    @property
    def probs(self) -> tuple[float, float, float, float]:
        """(both right, only the baseline right = broken, only the arm right = fixed, both wrong)."""
        fixed = (self.discordance + self.delta) / 2
        broken = (self.discordance - self.delta) / 2
        return (self.base - broken, broken, fixed, 1 - self.base - fixed)


def grid() -> list[Cell]:
    """Every combination whose four shares are all >= 0 (the others cannot happen)."""
    cells = []
    for n in ITEMS:
        for base in BASELINES:
            for delta in DIFFERENCES:
                for disc in DISCORDANCE:
                    cell = Cell(n, base, delta, disc)
                    if min(cell.probs) >= -1e-12:
                        cells.append(cell)
    return cells


def _clip(p: tuple[float, ...]) -> list[float]:
    """Shares with rounding error below 0 set to 0, summing to 1 (numpy's multinomial checks)."""
    q = np.clip(np.array(p), 0, None)
    return list(q / q.sum())


def tango_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The library's Tango interval for every (fixed, broken) with fixed + broken <= n."""
    lo = np.full((n + 1, n + 1), np.nan)
    hi = np.full((n + 1, n + 1), np.nan)
    for b in range(n + 1):
        for c in range(n + 1 - b):
            lo[b, c], hi[b, c] = tango_score_interval(b, c, n)
    return lo, hi


def former_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson on fixed / (fixed + broken), mapped to the difference (the old delta_ci)."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    d = b + c
    alpha = 1 - CONFIDENCE
    with np.errstate(invalid="ignore"):
        t_lo = np.where(b > 0, beta.ppf(alpha / 2, np.maximum(b, 1), c + 1), 0.0)
        t_hi = np.where(c > 0, beta.ppf(1 - alpha / 2, b + 1, np.maximum(c, 1)), 1.0)
    return (2 * t_lo - 1) * d / n, (2 * t_hi - 1) * d / n


def wilson_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The library's Wilson interval for k correct of n, for every k."""
    ci = np.array([accuracy_interval(k, n) for k in range(n + 1)])
    return ci[:, 0], ci[:, 1]


def bootstrap_table(
    n: int, keys: np.ndarray, resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval for each (fixed, broken) in `keys` (fixed * (n + 1) + broken)."""
    lo = np.full((n + 1) * (n + 1), np.nan)
    hi = np.full((n + 1) * (n + 1), np.nan)
    alpha = (1 - CONFIDENCE) / 2
    for start in range(0, len(keys), 2000):
        k = keys[start : start + 2000]
        b, c = k // (n + 1), k % (n + 1)
        # (fixed*, broken*, rest*) ~ Multinomial(n; b/n, c/n, rest/n), drawn as two binomials.
        bs = rng.binomial(n, b[:, None] / n, size=(len(k), resamples))
        share = np.where(n - b > 0, c / np.maximum(n - b, 1), 0.0)
        cs = rng.binomial(n - bs, share[:, None])
        q = np.quantile((bs - cs) / n, [alpha, 1 - alpha], axis=1)
        lo[k], hi[k] = q[0], q[1]
    return lo.reshape(n + 1, n + 1), hi.reshape(n + 1, n + 1)


def exact_coverage(cell: Cell, lo: np.ndarray, hi: np.ndarray) -> float:
    """P(interval covers the difference), summing every (fixed, broken) table's probability."""
    n = cell.n
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = b + c <= n
    b, c = b[ok], c[ok]
    _, p_broken, p_fixed, _ = _clip(cell.probs)
    rest = n - b - c
    logp = (
        gammaln(n + 1)
        - gammaln(b + 1)
        - gammaln(c + 1)
        - gammaln(rest + 1)
        + xlogy(b, p_fixed)
        + xlogy(c, p_broken)
        + xlogy(rest, 1 - p_fixed - p_broken)
    )
    covered = (lo[b, c] <= cell.delta + 1e-12) & (cell.delta - 1e-12 <= hi[b, c])
    return float(np.exp(logp)[covered].sum())


def _cover(iv: tuple[np.ndarray, np.ndarray], truth: float, *idx: np.ndarray) -> float:
    """Share of the draws whose interval (looked up at `idx`) holds `truth`."""
    lo, hi = iv[0][idx], iv[1][idx]
    return float(np.mean((lo <= truth + 1e-12) & (truth - 1e-12 <= hi)))


def _wilson(iv: tuple[np.ndarray, np.ndarray], truth: float, correct: np.ndarray) -> float:
    """Coverage of an arm's accuracy; NaN for a perfect arm (every draw is n of n: not a test)."""
    return float("nan") if truth >= 1 - 1e-9 else _cover(iv, truth, correct)


def simulate(
    cells: list[Cell], draws: int, resamples: int, seed: int
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Coverage of every interval in every cell, and the seconds each stage took."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float]] = []
    timings: dict[str, float] = {}
    exact: dict[tuple[int, float, float], float] = {}
    for n in ITEMS:
        mine = [c for c in cells if c.n == n]
        t = time.perf_counter()
        tango, former, wilson = tango_table(n), former_table(n), wilson_table(n)
        timings[f"tables n={n}"] = time.perf_counter() - t
        samples = [rng.multinomial(n, _clip(c.probs), size=draws) for c in mine]
        keys = np.unique(np.concatenate([s[:, 2] * (n + 1) + s[:, 1] for s in samples]))
        t = time.perf_counter()
        boot = bootstrap_table(n, keys, resamples, rng)
        timings[f"bootstrap n={n} ({len(keys)} tables)"] = time.perf_counter() - t
        for cell, s in zip(mine, samples, strict=True):
            both, broken, fixed = s[:, 0], s[:, 1], s[:, 2]
            key = (n, cell.delta, cell.discordance)  # exact coverage ignores the baseline
            if key not in exact:
                exact[key] = exact_coverage(cell, *tango)
            rows.append(
                {
                    "n": n,
                    "base": cell.base,
                    "delta": cell.delta,
                    "discordance": cell.discordance,
                    "tango": _cover(tango, cell.delta, fixed, broken),
                    "tango_exact": exact[key],
                    "bootstrap": _cover(boot, cell.delta, fixed, broken),
                    "wilson_base": _wilson(wilson, cell.base, both + broken),
                    "wilson_arm": _wilson(wilson, cell.base + cell.delta, both + fixed),
                    "former": _cover(former, cell.delta, fixed, broken),
                }
            )
    return rows, timings


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def summary_table(rows: list[dict[str, float]], methods: dict[str, str]) -> list[str]:
    """Markdown: min / median / max coverage per method, for each n and over the whole grid."""
    head = "| interval | " + " | ".join(f"n = {n}" for n in ITEMS) + " | all cells |"
    out = [head, "|---|" + "---:|" * (len(ITEMS) + 1)]
    for key, label in methods.items():
        cols = []
        for sel in [*ITEMS, None]:
            v = [r[key] for r in rows if (sel is None or r["n"] == sel) and not isnan(r[key])]
            cols.append(f"{_pct(min(v))} / {_pct(statistics.median(v))} / {_pct(max(v))}")
        out.append(f"| {label} | " + " | ".join(cols) + " |")
    return out


def _cell(r: dict[str, float]) -> str:
    return (
        f"n={r['n']:.0f}, baseline {r['base']:.2f}, difference {r['delta']:+.2f}, "
        f"discordant {r['discordance']:.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=4000, help="simulated studies per cell")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per table")
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vlm-bench-paired-coverage"))
    args = ap.parse_args()
    started = time.perf_counter()
    cells = grid()
    rows, timings = simulate(cells, args.draws, args.resamples, args.seed)
    wall = time.perf_counter() - started

    se = (0.95 * 0.05 / args.draws) ** 0.5
    lines = [
        f"{len(cells)} cells ({len(ITEMS)} sizes x {len(BASELINES)} baselines x "
        f"{len(DIFFERENCES)} differences x {len(DISCORDANCE)} discordance rates, feasible only), "
        f"{args.draws} draws each (Monte Carlo SE at 95%: {se * 100:.2f} pp), seed {args.seed}, "
        f"bootstrap {args.resamples} resamples per table; {os.cpu_count()} CPUs, {wall:.0f} s.",
        "",
        "Simulated coverage, min / median / max over the cells:",
        "",
        *summary_table(rows, METHODS),
        "",
        "Exact coverage of the verdict's interval (no simulation error):",
        "",
        *summary_table(rows, {"tango_exact": "Tango score, exact"}),
        "",
    ]
    lo_t, hi_t = TARGET
    verdicts = []
    for key, what in (("tango", "simulated"), ("tango_exact", "exact")):
        misses = [r for r in rows if not lo_t <= r[key] <= hi_t]
        verdicts.append(not misses)
        lines.append(
            f"{'PASS' if not misses else 'FAIL'}: the verdict's interval ({what}) stays within "
            f"{_pct(lo_t)}-{_pct(hi_t)} in {len(rows) - len(misses)} of {len(rows)} cells"
            + ("." if not misses else "; outside in:")
        )
        for r in sorted(misses, key=lambda r: r[key]):
            lines.append(
                f"  {_cell(r)}: {_pct(r[key])} (simulated {_pct(r['tango'])}, "
                f"exact {_pct(r['tango_exact'])})"
            )
    lines += ["", "Worst cells per interval (lowest, then highest coverage):"]
    for key, label in METHODS.items():
        ranked = sorted((r for r in rows if not isnan(r[key])), key=lambda r: r[key])
        lines.append(f"  {label}:")
        for r in [*ranked[:3], *ranked[-2:]]:
            lines.append(f"    {_pct(r[key])}  {_cell(r)}")
    lines += ["", "Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())]
    text = "\n".join(lines)
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text(text + "\n")
    with (args.out / "cells.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwritten: {args.out / 'coverage.md'}, {args.out / 'cells.csv'}")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
