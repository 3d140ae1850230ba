"""The `--until-decided` stopping rule on simulated arms with a known difference: how often it
decides wrongly (claims a difference that is not there, or the wrong sign) and how many of the
test items it needs, against a fixed design that asks all of them.

    python benchmarks/bench_until_decided.py [--runs 1000] [--n 600] [--alpha 0.05]

Each run draws a test split of n items: the baseline answers each right with probability p, the
other arm with p + delta (independently given the item), in a random order; the rule stops at
the first item where the confidence sequence (sequential.py) excludes 0. A wrong decision is a
difference claimed when delta = 0, or the opposite sign. The guarantee is at most alpha.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vlm_classify.sequential import stopping_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for p in (0.5, 0.75):
        for delta in (0.0, 0.02, 0.05, 0.1, 0.2):
            if p + delta > 1:
                continue
            wrong = decided = 0
            used = []
            for _ in range(args.runs):
                base = rng.random(args.n) < p
                arm = rng.random(args.n) < p + delta
                diffs = (arm.astype(int) - base.astype(int)).tolist()
                t, decision, _ = stopping_time(diffs, args.alpha)
                used.append(t)
                if decision is not None:
                    decided += 1
                    wrong += (delta == 0) or (decision == "worse")
            rows.append(
                {
                    "p_base": p,
                    "delta": delta,
                    "decided": decided / args.runs,
                    "wrong": wrong / args.runs,
                    "mean_items": float(np.mean(used)),
                    "median_items": float(np.median(used)),
                    "saved": 1 - float(np.mean(used)) / args.n,
                }
            )
    print(f"{args.runs} runs of n = {args.n}, alpha = {args.alpha}")
    print("p_base  delta  decided  wrong   mean items  median  saved")
    for r in rows:
        print(
            f"{r['p_base']:6.2f} {r['delta']:+6.2f} {r['decided']:8.1%} {r['wrong']:6.1%} "
            f"{r['mean_items']:11.0f} {r['median_items']:7.0f} {r['saved']:6.0%}"
        )
    worst = max(r["wrong"] for r in rows)
    print(f"worst wrong-decision rate: {worst:.2%} (guarantee: at most {args.alpha:.0%})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
