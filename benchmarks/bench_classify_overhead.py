"""Benchmark what `classify` adds to the bare `openai` SDK: client CPU per request, side by side.

    python benchmarks/bench_classify_overhead.py [--rounds 3] [--concurrency 16] [--work DIR]

Against a zero-latency `vlm-classify emulator` in another process, this process alternately
(1) sends the 600 test requests with the bare `openai` AsyncOpenAI client (the same bodies the
tool sends, built beforehand, the same ~40 KB images, the same concurrency) and (2) runs the tool
on the same 600 items (`vlm_classify.classify.classify`, a fresh arm each round: manifest, run
store, retries, answer parsing, predictions.csv and arm.json included). CPU is this process's
`time.process_time()` around each phase. Target: the tool's CPU per request <= 1.25x the bare
SDK's (medians over the rounds). Also reports the CLI (`vlm-classify classify`, a child
process: interpreter start-up, imports and the progress bar included) as information, and checks
that each image is base64-encoded once per run, not once per request. Exits 1 when the target is
missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import openai

from bench_classify_common import (
    DEFAULT_WORK,
    MODEL,
    EmulatorProcess,
    classify_args,
    fresh_copy,
    mean_image_kb,
    prepared_dataset,
    recorded,
    run_cli,
    test_items,
    verdict,
)

TARGET_RATIO = 1.25


def bodies_for(run_dir: Path) -> list[dict]:
    """The exact request bodies the tool sends for the test split (default settings)."""
    from vlm_classify.backends.openai.chat import (
        ChatSettings,
        OpenAIChatBackend,
        parse_openai_model,
    )
    from vlm_classify.dataset.manifest import read_labels, read_manifest

    ref = parse_openai_model(MODEL)
    backend = OpenAIChatBackend(
        ref,
        read_labels(run_dir),
        run_dir,
        ChatSettings(),
        client=openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1"),
    )
    items = [r for r in read_manifest(run_dir) if r.split == "test"]
    return [backend.body(it) for it in items]


async def bare_sdk(bodies: list[dict], env: dict[str, str], concurrency: int) -> int:
    """Send every body with the bare SDK, `concurrency` at a time; return the answers received."""
    client = openai.AsyncOpenAI(
        api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"], max_retries=0
    )
    queue = list(reversed(bodies))
    answered = 0

    async def worker() -> None:
        nonlocal answered
        while queue:
            body = queue.pop()
            completion = await client.chat.completions.create(**body)
            if completion.choices[0].message.content:
                answered += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return answered


def measure(fn) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()

    from vlm_classify.backends.openai import chat as backend_module
    from vlm_classify.classify import ClassifyOptions, classify
    from vlm_classify.runner import RunnerConfig

    prepared = prepared_dataset(args.work)
    run_dir = fresh_copy(prepared, args.work / "overhead" / "prepared")
    logs = args.work / "overhead" / "logs"
    n = len(test_items(run_dir))
    bodies = bodies_for(run_dir)
    body_kb = statistics.fmean(len(str(b)) for b in bodies) / 1000
    print(
        f"{n} requests per phase, concurrency {args.concurrency}, images {mean_image_kb(run_dir):.1f} KB "
        f"(request bodies ~{body_kb:.0f} KB), {args.rounds} rounds, zero-latency emulator in another process"
    )

    encodes = 0
    real_encode = backend_module.image_data_url

    def counting_encode(data: bytes, *a: object, **kw: object) -> str:
        nonlocal encodes
        encodes += 1
        return real_encode(data, *a, **kw)  # type: ignore[arg-type]

    backend_module.image_data_url = counting_encode  # type: ignore[assignment]
    bare_ms: list[float] = []
    tool_ms: list[float] = []
    with EmulatorProcess(["--manifest", str(run_dir)], logs / "emulator.log") as emu:
        saved = {k: os.environ.get(k) for k in emu.env}
        os.environ.update(emu.env)
        try:
            # Warm-up: imports, connection set-up and first-call caches on both paths.
            asyncio.run(bare_sdk(bodies[:32], emu.env, args.concurrency))
            classify(
                run_dir,
                ClassifyOptions(
                    model=MODEL, name="warmup", limit=32, runner=RunnerConfig(concurrency=16)
                ),
            )
            for r in range(args.rounds):
                cpu, wall, answered = measure(
                    lambda: asyncio.run(bare_sdk(bodies, emu.env, args.concurrency))
                )
                if answered != n:
                    print(f"FAIL: the bare SDK got {answered}/{n} answers")
                    return 1
                bare_ms.append(cpu / n * 1000)
                print(
                    f"round {r + 1}: bare SDK  {cpu / n * 1000:6.2f} ms CPU/request  ({n / wall:6.1f} req/s)"
                )
                encodes = 0
                arm = f"overhead-{r + 1}"
                options = ClassifyOptions(
                    model=MODEL, name=arm, runner=RunnerConfig(concurrency=args.concurrency)
                )
                cpu, wall, _ = measure(lambda options=options: classify(run_dir, options))
                done = recorded(run_dir, arm)
                if len(done) != n or any(v["error"] for v in done.values()):
                    print(f"FAIL: the tool recorded {len(done)}/{n} items, or errors")
                    return 1
                tool_ms.append(cpu / n * 1000)
                print(
                    f"round {r + 1}: tool      {cpu / n * 1000:6.2f} ms CPU/request  ({n / wall:6.1f} req/s), "
                    f"{encodes} base64 encodings"
                )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        cli = run_cli(
            classify_args(run_dir, "overhead-cli", "--concurrency", str(args.concurrency)),
            emu.env,
            logs,
            "classify-cli",
        )
        version = run_cli(["--version"], emu.env, logs, "version")
    backend_module.image_data_url = real_encode  # type: ignore[assignment]

    bare, tool = statistics.median(bare_ms), statistics.median(tool_ms)
    ratio = tool / bare
    print(f"bare openai SDK          {bare:.2f} ms CPU/request (median of {args.rounds})")
    print(f"vlm-classify (library)   {tool:.2f} ms CPU/request (median of {args.rounds})")
    print(f"ratio                    {ratio:.2f}x (target <= {TARGET_RATIO}x)")
    if cli.returncode == 0:
        print(
            f"vlm-classify (CLI)       {cli.cpu_s / n * 1000:.2f} ms CPU/request, of which start-up "
            f"(`vlm-classify --version`: {version.cpu_s:.2f} s) is {version.cpu_s / n * 1000:.2f} ms "
            f"(information only; {cli.wall_s:.1f} s wall)"
        )
    else:
        print(f"the CLI run failed ({cli.returncode}): {cli.stderr[-500:]}")
    once = encodes == n
    print(verdict(once, f"base64 once per image ({encodes} encodings for {n} requests)"))
    ok = ratio <= TARGET_RATIO and once and cli.returncode == 0
    print(verdict(ratio <= TARGET_RATIO, f"tool CPU per request <= {TARGET_RATIO}x the bare SDK"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
