"""Benchmark resume after `kill -9`: nothing lost, no finished item requested (billed) twice.

    python benchmarks/bench_classify_kill.py [--kill-at 0.4] [--latency-scale 0.1]
        [--concurrency 16] [--batch-fail-rate 0.03] [--work DIR]

Realtime: starts `vlm-classify classify` (a child process) on 600 test images against the
emulator (in this process, on its own server threads, counting chat requests per image and per
run), sends SIGKILL once a share of the items is recorded, then runs the same command again.
Checks that every item ends with a valid record, that no item finished by the killed run is
requested by the second run, and that every other item is requested exactly once by it; the
items that were in flight at the kill (requested, never recorded) are requested again and
reported.

Batch: the same command with `--mode batch` against an emulator failing 3% of batch lines,
killed with SIGKILL while the batch runs, then run again: it must re-attach to the same batch
(one upload, one batch created), retry the failed lines realtime, and end with every item valid.
Exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from bench_classify_common import (
    DEFAULT_WORK,
    PROFILE,
    CountingEmulator,
    check_profile,
    classify_args,
    fresh_copy,
    prepared_dataset,
    recorded,
    run_cli,
    start_cli,
    test_items,
    verdict,
    wait_cli,
)


def integrity(run_dir: Path) -> str:
    db = sqlite3.connect(run_dir / "runs.sqlite")
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def remote_count(run_dir: Path, arm: str, kind: str) -> int:
    """Remote objects of `kind` the run store holds for `arm` (0 before the store exists)."""
    path = run_dir / "runs.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(
            db.execute(
                "SELECT count(*) FROM remote_objects WHERE arm = ? AND kind = ?", (arm, kind)
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:  # the tables are not created yet
        return 0
    finally:
        db.close()


def realtime(args: argparse.Namespace, prepared: Path, profile: Path) -> bool:
    run_dir = fresh_copy(prepared, args.work / "kill" / "realtime")
    logs = args.work / "kill" / "logs"
    items = test_items(run_dir)
    sha_to_id = {sha: i for i, _, sha in items}
    ids = set(sha_to_id.values())
    cmd = classify_args(run_dir, "killed", "--concurrency", str(args.concurrency))
    checks: list[tuple[bool, str]] = []
    with CountingEmulator(
        manifests=[run_dir], latency_profile=profile, latency_scale=args.latency_scale
    ) as emu:
        emu.set_phase("run1")
        started = time.perf_counter()
        proc = start_cli(cmd, emu.env, logs, "realtime-run1")
        want = int(len(ids) * args.kill_at)
        while len(recorded(run_dir, "killed")) < want and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        run1 = wait_cli(proc, logs, "realtime-run1", started)
        time.sleep(1.0)  # let the server finish reading what the dead client had sent
        finished1 = set(recorded(run_dir, "killed"))
        emu.set_phase("run2")
        run2 = run_cli(cmd, emu.env, logs, "realtime-run2")
        time.sleep(0.2)
        req1 = {sha_to_id[s]: n for s, n in emu.requested("run1").items()}
        req2 = {sha_to_id[s]: n for s, n in emu.requested("run2").items()}
    final = recorded(run_dir, "killed")
    in_flight = set(req1) - finished1
    again = in_flight & set(req2)
    print(
        f"realtime: killed after {run1.wall_s:.2f} s (exit {run1.returncode}) with "
        f"{len(finished1)}/{len(ids)} items recorded; {len(in_flight)} more were in flight"
    )
    print(
        f"  rerun exited {run2.returncode} after {run2.wall_s:.2f} s; store: {integrity(run_dir)}"
    )
    print(
        f"  requests: run 1 {sum(req1.values())}, run 2 {sum(req2.values())} "
        f"(items to do: {len(ids) - len(finished1)})"
    )
    print(f"  in flight at the kill and requested again: {len(again)} (never recorded as finished)")
    finished_again = finished1 & set(req2)
    checks.append((run1.returncode == -signal.SIGKILL, "the first run died of SIGKILL"))
    checks.append((run2.returncode == 0, "the rerun succeeded"))
    checks.append(
        (
            set(final) == ids and all(r["valid"] and not r["error"] for r in final.values()),
            f"every item has a valid record ({len(final)}/{len(ids)})",
        )
    )
    checks.append(
        (not finished_again, f"no finished item requested again ({len(finished_again)} were)")
    )
    checks.append(
        (
            set(req2) == ids - finished1 and all(n == 1 for n in req2.values()),
            "the rerun requested each unfinished item exactly once",
        )
    )
    checks.append((all(n == 1 for n in req1.values()), "the first run requested each item once"))
    for ok, what in checks:
        print("  " + verdict(ok, what))
    return all(ok for ok, _ in checks)


def batch(args: argparse.Namespace, prepared: Path) -> bool:
    run_dir = fresh_copy(prepared, args.work / "kill" / "batch")
    logs = args.work / "kill" / "logs"
    items = test_items(run_dir)
    sha_to_id = {sha: i for i, _, sha in items}
    ids = set(sha_to_id.values())
    cmd = classify_args(run_dir, "batch", "--mode", "batch", "--poll", "0.2")
    with CountingEmulator(
        manifests=[run_dir],
        batch_fail_rate=args.batch_fail_rate,
        batch_seconds=args.batch_seconds,
    ) as emu:
        emu.set_phase("batch")
        started = time.perf_counter()
        proc = start_cli(cmd, emu.env, logs, "batch-run1")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if remote_count(run_dir, "batch", "batch"):
                break
            time.sleep(0.05)
        time.sleep(args.batch_seconds / 4)  # into the batch's run, before it completes
        os.kill(proc.pid, signal.SIGKILL)
        run1 = wait_cli(proc, logs, "batch-run1", started)
        run2 = run_cli(cmd, emu.env, logs, "batch-run2")
        routes = emu.emu.stats.as_dict()["routes"]
        per_image = {sha_to_id[s]: n for s, n in emu.requested("batch").items()}
    final = recorded(run_dir, "batch")
    failed_lines = remote_count(run_dir, "batch", "batch_failed_line")
    modes: dict[str, int] = {}
    for r in final.values():
        modes[str(r["mode"])] = modes.get(str(r["mode"]), 0) + 1
    created = routes.get("POST /v1/batches", 0)
    uploads = routes.get("POST /v1/files", 0)
    print(
        f"batch: killed after {run1.wall_s:.2f} s (exit {run1.returncode}) while the batch ran; "
        f"rerun exited {run2.returncode} after {run2.wall_s:.2f} s; store: {integrity(run_dir)}"
    )
    print(
        f"  {uploads} upload(s), {created} batch(es) created; {failed_lines} failed lines "
        f"({failed_lines / len(ids):.1%}) retried realtime; records by mode {modes}"
    )
    twice = sorted(i for i, n in per_image.items() if n > 1)
    print(
        f"  chat answers: {sum(per_image.values())} for {len(ids)} items "
        f"({len(twice)} items answered twice)"
    )
    checks = [
        (run1.returncode == -signal.SIGKILL, "the first run died of SIGKILL"),
        (run2.returncode == 0, "the rerun succeeded"),
        (created == 1 and uploads == 1, "the rerun re-attached (one upload, one batch)"),
        (
            set(final) == ids and all(r["valid"] and not r["error"] for r in final.values()),
            f"every item has a valid record ({len(final)}/{len(ids)})",
        ),
        (
            failed_lines > 0 and modes.get("realtime", 0) == failed_lines,
            "failed lines went realtime",
        ),
        (not twice and set(per_image) == ids, "every item answered exactly once"),
    ]
    for ok, what in checks:
        print("  " + verdict(ok, what))
    return all(ok for ok, _ in checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kill-at", type=float, default=0.4, help="share recorded before the kill")
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--latency-scale", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-fail-rate", type=float, default=0.03)
    ap.add_argument("--batch-seconds", type=float, default=4.0)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    profile = check_profile(args.profile)
    prepared = prepared_dataset(args.work)
    ok = realtime(args, prepared, profile)
    ok = batch(args, prepared) and ok
    print(verdict(ok, "kill -9 and resume, realtime and batch"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
