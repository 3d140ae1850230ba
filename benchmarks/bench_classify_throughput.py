"""Benchmark realtime `classify` throughput against the emulator replaying the study's latencies.

    python benchmarks/bench_classify_throughput.py [--profile CSV] [--latency-scale 1.0]
        [--concurrency 16] [--work DIR]

600 test images (15 classes x 40, ~40 KB JPEGs) through `vlm-classify classify --mode realtime`
(a child process) against `vlm-classify emulator` (another child process, so client and server
share no GIL) replaying the original per-request latencies. Little's law bounds the rate at
concurrency / mean latency; the target is >= 90% of that bound (at concurrency 16 and the
profile's mean of 1.67 s, >= 8.6 req/s: over 14x the original notebook's 0.6 req/s).
Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench_classify_common import (
    DEFAULT_WORK,
    PROFILE,
    EmulatorProcess,
    arm_json,
    check_profile,
    classify_args,
    fresh_copy,
    prepared_dataset,
    profile_mean_ms,
    recorded,
    run_cli,
    test_items,
    verdict,
)

ORIGINAL_RATE = 0.6
"""Requests per second of the original notebook's sequential loop."""
TARGET_SHARE = 0.9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=PROFILE, help="latency profile CSV")
    ap.add_argument("--latency-scale", type=float, default=1.0, help="multiply every latency")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="dataset cache and run dirs")
    args = ap.parse_args()
    profile = check_profile(args.profile)
    mean_s = profile_mean_ms(profile) / 1000 * args.latency_scale
    bound = args.concurrency / mean_s

    prepared = prepared_dataset(args.work)
    run_dir = fresh_copy(prepared, args.work / "throughput" / "prepared")
    logs = args.work / "throughput" / "logs"
    items = test_items(run_dir)
    emu_args = ["--manifest", str(run_dir), "--latency-profile", str(profile)]
    emu_args += ["--latency-scale", str(args.latency_scale)]
    print(
        f"{len(items)} images, concurrency {args.concurrency}, profile {profile.name} "
        f"x{args.latency_scale:g} (mean {mean_s * 1000:.0f} ms)"
    )
    with EmulatorProcess(emu_args, logs / "emulator.log") as emu:
        run = run_cli(
            classify_args(run_dir, "throughput", "--concurrency", str(args.concurrency)),
            emu.env,
            logs,
            "classify",
        )
    if run.returncode != 0:
        print(run.stderr[-2000:], file=sys.stderr)
        print(f"FAIL: classify exited {run.returncode}")
        return 1
    records = recorded(run_dir, "throughput")
    summary = arm_json(run_dir, "throughput")["last_run"]
    runner_wall = float(summary["wall_s"])  # type: ignore[index]
    latencies = [float(r["latency_ms"]) for r in records.values() if r["latency_ms"] is not None]
    client_mean_s = statistics.fmean(latencies) / 1000
    rate = len(records) / runner_wall
    rate_cmd = len(records) / run.wall_s
    share = rate / bound
    print(f"items recorded           {len(records)}/{len(items)}, errors {summary['errors']}")  # type: ignore[index]
    print(f"run wall (requests)      {runner_wall:.2f} s  -> {rate:.2f} req/s")
    print(f"command wall (+startup)  {run.wall_s:.2f} s  -> {rate_cmd:.2f} req/s")
    print(
        f"client CPU               {run.cpu_s:.2f} s ({run.cpu_s / len(items) * 1000:.2f} ms/request)"
    )
    print(
        f"mean latency             profile {mean_s * 1000:.0f} ms, seen by the client {client_mean_s * 1000:.0f} ms"
    )
    print(f"Little's-law bound       {bound:.2f} req/s (concurrency / profile mean)")
    print(
        f"achieved                 {share:.1%} of the bound ({rate / (args.concurrency / client_mean_s):.1%} "
        f"of concurrency / mean latency seen), {rate / ORIGINAL_RATE:.1f}x the original {ORIGINAL_RATE} req/s"
    )
    ok = len(records) == len(items) and share >= TARGET_SHARE
    print(verdict(ok, f">= {TARGET_SHARE:.0%} of the Little's-law bound, all items recorded"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
