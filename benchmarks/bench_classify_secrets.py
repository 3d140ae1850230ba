"""Check that the API key never lands in any file `classify` writes, in its logs or in its reports.

    python benchmarks/bench_classify_secrets.py [--work DIR] [--key sk-bench-SECRET-123]

Runs the tool with a distinctive key in the ways most likely to leak it: realtime under faults
with `--debug` (SDK and HTTP debug logs on stderr), Azure style with `--debug`, Batch mode with
failed lines, and a run whose key the server refuses (401). Every run's stdout and stderr are
captured to files. Then greps every file under the work folder (so also whatever the other
`bench_classify_*` benchmarks left there: run stores, predictions, arm.json, captured logs; the
emulator's own stdout, which prints the key on purpose for the user to export, is never saved)
for the key. Exits 1 when any file holds it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench_classify_common import (
    DEFAULT_WORK,
    SECRET_KEY,
    EmulatorProcess,
    classify_args,
    files_containing,
    fresh_copy,
    prepared_dataset,
    run_cli,
    verdict,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--key", default=SECRET_KEY, help="the key the tool is given")
    args = ap.parse_args()
    prepared = prepared_dataset(args.work)
    base = args.work / "secrets"
    logs = base / "logs"
    runs: list[tuple[str, int, int]] = []

    faults = "429=0.1,500=0.05,timeout=0.02,drop=0.01"
    run_dir = fresh_copy(prepared, base / "prepared")
    emu_args = ["--manifest", str(run_dir), "--faults", faults, "--timeout-hold", "2"]
    emu_args += ["--batch-seconds", "1", "--batch-fail-rate", "0.03"]
    with EmulatorProcess(emu_args, logs / "emulator.log", api_key=args.key) as emu:
        env = {**emu.env, "OPENAI_API_KEY": args.key, "AZURE_OPENAI_API_KEY": args.key}
        for name, cmd, extra_env in [
            (
                "realtime-debug",
                ["--debug", *classify_args(run_dir, "rt", "--limit", "60", "--timeout", "1")],
                {},
            ),
            (
                "azure-debug",
                [
                    "--debug",
                    "classify",
                    str(run_dir),
                    "--model",
                    "azure/gpt-4o-2024-08-06",
                    "--name",
                    "azure",
                    "--limit",
                    "60",
                    "--timeout",
                    "1",
                ],
                {},
            ),
            ("batch", classify_args(run_dir, "batch", "--mode", "batch", "--poll", "0.2"), {}),
            (
                "wrong-key",
                classify_args(run_dir, "refused", "--limit", "5"),
                {"OPENAI_API_KEY": args.key + "-not-this-one"},
            ),
        ]:
            run = run_cli(cmd, {**env, **extra_env}, logs, name)
            runs.append((name, run.returncode, len(run.stderr) + len(run.stdout)))
    with EmulatorProcess(
        ["--manifest", str(run_dir)], logs / "emulator-other-key.log", api_key="sk-another-key"
    ) as emu:
        # The server expects another key: the tool's key is refused and must not be echoed.
        env = {**emu.env, "OPENAI_API_KEY": args.key}
        run = run_cli(classify_args(run_dir, "refused2", "--limit", "5"), env, logs, "refused")
        runs.append(("refused", run.returncode, len(run.stderr) + len(run.stdout)))

    ok = True
    for name, code, size in runs:
        expected = 1 if name in ("wrong-key", "refused") else 0
        print(f"{name:16s} exit {code} (expected {expected}), {size:,} characters of output")
        ok = ok and code == expected
    scanned, hits = files_containing([args.work], args.key)
    print(f"scanned {scanned} files under {args.work} for the key")
    for h in hits:
        print(f"  the key is in {h}")
    print(verdict(ok, "the runs ended as expected"))
    print(verdict(not hits, "the API key is in no file the tool wrote"))
    return 0 if ok and not hits else 1


if __name__ == "__main__":
    sys.exit(main())
