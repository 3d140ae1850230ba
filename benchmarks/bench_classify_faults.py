"""Benchmark realtime `classify` under injected faults: every item must end with a valid record.

    python benchmarks/bench_classify_faults.py [--faults 429=0.1,500=0.05,timeout=0.02,drop=0.01]
        [--timeout 1] [--timeout-hold 3] [--latency-scale 0.05] [--concurrency 16] [--work DIR]

600 test images through `vlm-classify classify` (a child process, default retry settings: 6
attempts, exponential backoff with jitter, `retry-after` honoured) against `vlm-classify
emulator` (another child process) that answers 10% of chat requests 429, 5% 500, holds 2% until
the client's timeout and drops 1% of connections, with the study's latencies scaled down. The
per-request timeout is short (1 s) and the emulator holds a timed-out request longer (3 s), so
the run ends in seconds. Target: 600/600 items recorded valid, with no error. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from bench_classify_common import (
    DEFAULT_WORK,
    PROFILE,
    EmulatorProcess,
    arm_json,
    check_profile,
    classify_args,
    fresh_copy,
    predictions_csv,
    prepared_dataset,
    recorded,
    run_cli,
    test_items,
    verdict,
)

FAULTS = "429=0.1,500=0.05,timeout=0.02,drop=0.01"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", default=FAULTS)
    ap.add_argument("--timeout", type=float, default=1.0, help="the client's per-request timeout")
    ap.add_argument("--timeout-hold", type=float, default=3.0, help="how long a timeout is held")
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--latency-scale", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--max-attempts", type=int, default=None, help="passed to classify (default: the tool's)"
    )
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    profile = check_profile(args.profile)

    prepared = prepared_dataset(args.work)
    run_dir = fresh_copy(prepared, args.work / "faults" / "prepared")
    logs = args.work / "faults" / "logs"
    ids = {i for i, _, _ in test_items(run_dir)}
    emu_args = ["--manifest", str(run_dir), "--faults", args.faults]
    emu_args += ["--timeout-hold", str(args.timeout_hold), "--retry-after-ms", "200"]
    emu_args += ["--latency-profile", str(profile), "--latency-scale", str(args.latency_scale)]
    print(
        f"{len(ids)} images, faults {args.faults}, client timeout {args.timeout:g} s "
        f"(held {args.timeout_hold:g} s), latency x{args.latency_scale:g}, concurrency {args.concurrency}"
    )
    with EmulatorProcess(emu_args, logs / "emulator.log") as emu:
        run = run_cli(
            classify_args(
                run_dir,
                "faults",
                "--concurrency",
                str(args.concurrency),
                "--timeout",
                str(args.timeout),
                *(["--max-attempts", str(args.max_attempts)] if args.max_attempts else []),
            ),
            emu.env,
            logs,
            "classify",
        )
    print(f"classify exited {run.returncode} after {run.wall_s:.1f} s")
    if run.returncode != 0:
        print(run.stderr[-2000:])
    records = recorded(run_dir, "faults")
    rows = predictions_csv(run_dir / "arms" / "faults") if run.returncode == 0 else []
    valid = {r["id"] for r in rows if r["valid"] == "1" and not r.get("error")}
    errors = [i for i, r in records.items() if r["error"]]
    attempts = Counter(int(r["attempts"]) for r in records.values())  # type: ignore[call-overload]
    extra = sum((a - 1) * n for a, n in attempts.items())
    arm = arm_json(run_dir, "faults") if run.returncode == 0 else {}
    summary: dict = arm.get("last_run", {})  # type: ignore[assignment]
    max_attempts = int(arm.get("runner", {}).get("max_attempts", 0))  # type: ignore[attr-defined]
    print(f"records                  {len(records)}/{len(ids)} ({len(errors)} with an error)")
    print(f"valid in predictions.csv {len(valid & ids)}/{len(ids)}")
    print(
        f"requests                 {sum(a * n for a, n in attempts.items())} "
        f"({extra} retries; emulator saw {emu.requests} HTTP requests in all)"
    )
    print(f"attempts per item        {dict(sorted(attempts.items()))}")
    print(f"retries (arm.json)       {summary.get('retries')}")
    if max_attempts:
        fault_rate = sum(float(kv.split("=")[1]) for kv in args.faults.split(","))
        miss = 1 - (1 - fault_rate**max_attempts) ** len(ids)
        print(
            f"chance of a miss         {miss:.3%} (some item faulted on all {max_attempts} attempts "
            f"at a {fault_rate:.0%} fault rate)"
        )
    ok = run.returncode == 0 and valid >= ids and not errors and len(records) == len(ids)
    print(verdict(ok, f"{len(valid & ids)}/{len(ids)} items end with a valid record"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
