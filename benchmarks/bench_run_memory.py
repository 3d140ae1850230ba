"""Benchmark `vlm-classify run` memory at Stanford Dogs scale: peak RSS against the dataset size.

    python benchmarks/bench_run_memory.py                 # 120 classes x 172, at 10%, 50%, 100%
    python benchmarks/bench_run_memory.py --quick         # 20 classes x 40, at 50% and 100% (< 1 min)
    python benchmarks/bench_run_memory.py --fractions 1 --json out.json --keep DIR

Each size is a fresh experiment: `source = "generated"` (a Stanford-Dogs-shaped tree written by
the run itself), every generated image prepared (train 100 per class like the official Stanford
Dogs split, the rest, the official test set's share, split into val and test), the built-in
emulator with tiny latencies, two cloud arms (zero-shot through the Batch API and a fine-tuned
model realtime, as in examples/demo.toml; `--arms plain` swaps the fine-tune for a realtime
zero-shot arm with the short prompt), a small latency study and the report.

Why 172 images per class: Stanford Dogs has 20,580 images of 120 breeds (148 to 252 per breed,
171.5 on average); the experiment file takes one count per class, so 120 x 172 = 20,640 images
(0.3% more) is the closest even tree. All are prepared, so the arms classify a test split of
thousands of items (6,960 at full size) and the fine-tune uploads 12,000 training images.

`python -m vlm_classify run` runs as a subprocess; the benchmark samples the RSS of its whole
process tree (the run, the emulator's threads inside it, and prepare's worker processes) every
50 ms, follows the run's `--log` to attribute each sample (and the wall time, to 50 ms) to the
step that was running, and also reads the run's own high-water mark (VmHWM). The `prepare` step
first writes the generated tree: its share is read from the last image's modification time.
It prints a table, writes JSON (`--json`, with a 0.5 s series of the RSS) and exits 1 when a
peak reaches 2 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is in the dev extras
    psutil = None

STANFORD_DOGS_IMAGES = 20_580
LIMIT_MB = 2048
SAMPLE_S = 0.05
STEP_LINE = re.compile(r"^\S+ \S+ (run|skip) (\S+) \(")


def split_for(per_class: int) -> tuple[int, int, int]:
    """Train 100 of 172 (the official Stanford Dogs train share), val 14, test the rest, scaled."""
    train = max(1, round(per_class * 100 / 172))
    val = max(1, round(per_class * 14 / 172)) if per_class >= 3 else 0
    test = per_class - train - val
    if test < 1:
        train -= 1 - test
        test = 1
    return train, val, test


def experiment_toml(classes: int, per_class: int, arms: str, latency_requests: int) -> str:
    """The experiment file for one size (see the module docstring)."""
    train, val, test = split_for(per_class)
    second = (
        '[[arm]]\nname = "fine-tuned"\nmode = "realtime"\nconcurrency = 32\n'
        'finetune = { from = "openai/gpt-4o-2024-08-06", epochs = 2, lr_multiplier = 0.5, '
        "seed = 42 }\n"
        if arms == "finetune"
        else '[[arm]]\nname = "short-prompt"\nmodel = "openai/gpt-4o-mini-2024-07-18"\n'
        'prompt = "short"\nmode = "realtime"\nconcurrency = 32\n'
    )
    second_name = "fine-tuned" if arms == "finetune" else "short-prompt"
    latency = (
        f'[latency]\narms = ["{second_name}"]\nrequests = {latency_requests}\n'
        "concurrency = [1, 8]\n\n"
        if latency_requests
        else ""
    )
    return f"""# bench_run_memory.py: {classes} classes x {per_class} generated images
out = "run"

[dataset]
source = "generated"
classes = {classes}
images_per_class = {per_class}
split = [{train}, {val}, {test}]
sampling = "first"
seed = 42

[emulator]
accuracy = 0.74
ft_accuracy = 0.83
latency_profile = "seed-study"
latency_scale = 0.001
batch_seconds = 1
ft_seconds = 1

[[arm]]
name = "zero-shot"
model = "openai/gpt-4o-2024-08-06"
mode = "batch"

{second}
{latency}[report]
baseline = "zero-shot"
volume = 10000
"""


def _tree_rss(proc: Any) -> tuple[int, int]:
    """(bytes of RSS of the process and all its descendants, the process's own VmHWM)."""
    total = 0
    procs = [proc]
    with contextlib.suppress(psutil.Error):
        procs += proc.children(recursive=True)
    for p in procs:
        with contextlib.suppress(psutil.Error):  # a worker that just ended
            total += p.memory_info().rss
    return total, _hwm(proc.pid)


def _tree_rss_proc(pid: int) -> tuple[int, int]:
    """The same from /proc alone (no psutil): walk children via /proc/PID/task/*/children."""
    total, seen, todo = 0, set(), [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total, _hwm(pid)


def _hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def measure(folder: Path, classes: int, per_class: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one experiment of this size in `folder`; its peak memory overall and per step."""
    folder.mkdir(parents=True, exist_ok=True)
    exp = folder / "experiment.toml"
    exp.write_text(
        experiment_toml(classes, per_class, args.arms, args.latency_requests), encoding="utf-8"
    )
    log = folder / "run.log"
    log.unlink(missing_ok=True)
    stderr = (folder / "stderr.txt").open("w")
    cmd = [sys.executable, "-m", "vlm_classify", "run", str(exp), "--quiet", "--log", str(log)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start, start_wall = time.perf_counter(), time.time()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    proc = psutil.Process(child.pid) if psutil else None
    peak = hwm = 0
    steps: dict[str, dict[str, float]] = {}
    current = "startup"
    steps[current] = {"start_s": 0.0, "peak_mb": 0.0}
    seen = 0
    series: list[tuple[float, float, str]] = []
    """(seconds, MB, step) every 0.5 s: how memory moves through the run."""
    while child.poll() is None:
        now = time.perf_counter() - start
        if log.exists():
            lines = log.read_text(encoding="utf-8").splitlines()
            for line in lines[seen:]:
                m = STEP_LINE.match(line)
                if m and m.group(1) == "run":
                    steps[current]["end_s"] = now
                    current = m.group(2)
                    steps[current] = {"start_s": now, "peak_mb": 0.0}
            seen = len(lines)
        try:
            rss, h = _tree_rss(proc) if proc else _tree_rss_proc(child.pid)
        except Exception:  # the process ended between poll() and the read
            break
        peak, hwm = max(peak, rss), max(hwm, h)
        steps[current]["peak_mb"] = max(steps[current]["peak_mb"], rss / 2**20)
        if not series or now - series[-1][0] >= 0.5:
            series.append((round(now, 2), round(rss / 2**20, 1), current))
        time.sleep(SAMPLE_S)
    out, _ = child.communicate()
    wall = time.perf_counter() - start
    steps[current]["end_s"] = wall
    stderr.close()
    if child.returncode != 0:
        tail = (folder / "stderr.txt").read_text()[-3000:]
        raise SystemExit(f"run failed ({child.returncode}) at {classes}x{per_class}:\n{tail}")
    for s in steps.values():
        s["wall_s"] = round(s["end_s"] - s["start_s"], 1)
        s["peak_mb"] = round(s["peak_mb"], 1)
    generated = [f.stat().st_mtime for f in (folder / "run" / "source").rglob("*.jpg")]
    if generated and "prepare" in steps:  # the step generates the tree, then prepares it
        began = start_wall + steps["prepare"]["start_s"]
        steps["prepare"]["generate_s"] = round(max(generated) - began, 1)
    state = json.loads((folder / "run" / "run.json").read_text(encoding="utf-8"))
    items = state["steps"]["prepare"]["outputs"]["items"]
    train, val, test = split_for(per_class)
    return {
        "classes": classes,
        "per_class": per_class,
        "generated_images": classes * per_class,
        "prepared_items": items,
        "split": [train * classes, val * classes, test * classes],
        "peak_tree_rss_mb": round(peak / 2**20, 1),
        "run_vmhwm_mb": round(hwm / 2**20, 1),
        "wall_s": round(wall, 1),
        "steps": {k: v for k, v in steps.items() if k != "startup" or v["wall_s"] > 0},
        "stdout": out.strip().splitlines()[-2:],
        "series": series,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--classes", type=int, help="breeds [default: 120; --quick: 20]")
    ap.add_argument(
        "--per-class", type=int, help="generated images per class [default: 172; --quick: 40]"
    )
    ap.add_argument(
        "--fractions",
        help="sizes, as fractions of --per-class [default: 0.1,0.5,1; --quick: 0.5,1]",
    )
    ap.add_argument(
        "--arms",
        choices=["finetune", "plain"],
        default="finetune",
        help="second arm: fine-tuned realtime (default), or plain: a realtime zero-shot arm",
    )
    ap.add_argument("--latency-requests", type=int, default=60, help="0: no latency study")
    ap.add_argument("--quick", action="store_true", help="20 classes x 40, at 50%% and 100%%")
    ap.add_argument(
        "--keep", type=Path, help="run in this folder and keep it (default: a temp dir)"
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    quick = {"classes": 20, "per_class": 40, "fractions": "0.5,1"}
    full = {"classes": 120, "per_class": 172, "fractions": "0.1,0.5,1"}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    fractions = [float(f) for f in args.fractions.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-run-memory-"))
    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"sampling {'psutil' if psutil else '/proc'} every {SAMPLE_S * 1000:.0f} ms; in {root}"
    )
    results = []
    try:
        for f in fractions:
            per = max(3, round(args.per_class * f))
            print(
                f"\n{args.classes} classes x {per} images ({args.classes * per:,}) ...", flush=True
            )
            r = measure(root / f"{args.classes}x{per}", args.classes, per, args)
            results.append(r)
            print(
                f"  peak {r['peak_tree_rss_mb']:,.0f} MB (tree), run's VmHWM "
                f"{r['run_vmhwm_mb']:,.0f} MB, {r['wall_s']:.0f} s"
            )
            for name, s in r["steps"].items():
                gen = (
                    f"  (generating the tree: {s['generate_s']:.1f} s)" if "generate_s" in s else ""
                )
                print(f"    {name:24} {s['wall_s']:7.1f} s  peak {s['peak_mb']:7.0f} MB{gen}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'images':>8} {'items':>7} {'test':>6} {'peak MB':>9} {'VmHWM MB':>9} {'wall s':>7}")
    for r in results:
        print(
            f"{r['generated_images']:>8,} {r['prepared_items']:>7,} {r['split'][2]:>6,} "
            f"{r['peak_tree_rss_mb']:>9,.0f} {r['run_vmhwm_mb']:>9,.0f} {r['wall_s']:>7.0f}"
        )
    worst = max(r["peak_tree_rss_mb"] for r in results)
    verdict = "under" if worst < LIMIT_MB else "OVER"
    print(f"worst peak {worst:,.0f} MB: {verdict} the {LIMIT_MB:,} MB requirement")
    doc = {
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "arms": args.arms,
        "latency_requests": args.latency_requests,
        "limit_mb": LIMIT_MB,
        "stanford_dogs_images": STANFORD_DOGS_IMAGES,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if worst >= LIMIT_MB:
        sys.exit(1)


if __name__ == "__main__":
    main()
