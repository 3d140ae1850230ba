"""Shared pieces of the `classify` benchmarks: the dataset, the emulator process, CLI runs, checks.

Not a benchmark itself. The benchmarks import it as a sibling module (`python benchmarks/...`
puts this folder first on `sys.path`).

The dataset is 15 classes x 40 test images (plus 1 train and 1 val image per class) of
photo-like 500x375 JPEGs of about 40 KB each, generated once and prepared with `prepare` into
the work folder (cached for later runs). Every run gets its own copy of the prepared folder (the
images folder is a symlink), so each starts with an empty run store.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "src" / "vlm_classify" / "data" / "seed-study-latencies.csv"
"""The original study's per_request_latencies.csv, shipped with the package."""
DEFAULT_WORK = Path(tempfile.gettempdir()) / "vlm-bench-classify"
SECRET_KEY = "sk-bench-SECRET-123"
"""A distinctive API key: the secret check greps everything the tool wrote for it."""
MODEL = "openai/gpt-4o-2024-08-06"
CLASSES = 15
TEST_PER_CLASS = 40


def vlm_command() -> list[str]:
    """How to start the `vlm-classify` CLI with this interpreter's environment."""
    script = Path(sys.executable).with_name("vlm-classify")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from vlm_classify.cli import main; main()"]


def fail(message: str) -> None:
    """One clear line on stderr, then exit 2 (a setup problem, not a missed target)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_profile(path: Path) -> Path:
    if not Path(path).is_file():
        fail(
            f"latency profile {path} not found: pass --profile PATH to a CSV with a latency_ms "
            "column (the original study's per_request_latencies.csv)"
        )
    return Path(path)


def profile_mean_ms(path: Path, model: str = "base") -> float:
    """Mean of the profile's latencies for `model` rows (all rows when there is no model column)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if not (r.get("error") or "").strip()]
    picked = [r for r in rows if (r.get("model") or "").strip() == model] or rows
    values = [float(r["latency_ms"]) for r in picked]
    return sum(values) / len(values)


# --- the dataset -----------------------------------------------------------------------------


def _write_class(args: tuple[Path, int, int]) -> None:
    from bench_prepare import photo_like

    folder, class_index, count = args
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{folder.name.split('-')[0]}_{i:04d}.jpg"
        if not path.exists():
            photo_like(500, 375, 7_000_000 + class_index * 1_000 + i).save(path, "JPEG", quality=90)


def prepared_dataset(
    work: Path, classes: int = CLASSES, test_per_class: int = TEST_PER_CLASS
) -> Path:
    """A prepared folder with `classes * test_per_class` test images of ~40 KB (cached in `work`)."""
    from concurrent.futures import ProcessPoolExecutor

    from vlm_classify.dataset.prepare import PrepareOptions, prepare

    out = work / f"prepared-{classes}x{test_per_class}"
    marker = out / ".complete"
    if marker.exists():
        return out
    src = work / f"source-{classes}x{test_per_class}"
    per = test_per_class + 2
    jobs = [(src / "Images" / f"n{91000000 + c:08d}-breed_{c:03d}", c, per) for c in range(classes)]
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_write_class, jobs))
    if out.exists():
        shutil.rmtree(out)
    prepare(src / "Images", out, PrepareOptions(split=(1, 1, test_per_class), workers=2))
    marker.write_text("ok\n")
    print(
        f"(dataset: {classes * per} images generated and prepared in {time.perf_counter() - t:.1f} s)"
    )
    return out


def fresh_copy(prepared: Path, dest: Path) -> Path:
    """A copy of the prepared folder with no run store (images shared through a symlink)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("manifest.csv", "labels.txt", "prepare-report.json"):
        if (prepared / name).exists():
            shutil.copy2(prepared / name, dest / name)
    (dest / "images").symlink_to((prepared / "images").resolve(), target_is_directory=True)
    return dest


def test_items(prepared: Path) -> list[tuple[str, str, str]]:
    """`(id, label, image_sha256)` of the test split."""
    from vlm_classify.dataset.manifest import read_manifest

    return [(r.id, r.label, r.image_sha256) for r in read_manifest(prepared) if r.split == "test"]


def mean_image_kb(prepared: Path) -> float:
    sizes = [p.stat().st_size for p in (prepared / "images").rglob("*.jpg")]
    return sum(sizes) / len(sizes) / 1000


# --- the emulator in its own process -------------------------------------------------------


class EmulatorProcess:
    """`vlm-classify emulator --port 0 ...` in a child process; `env` points clients at it."""

    def __init__(self, args: Sequence[str], log_path: Path, api_key: str = SECRET_KEY) -> None:
        self.args = [*vlm_command(), "emulator", "--port", "0", "--api-key", api_key, *args]
        self.log_path = log_path
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[str] | None = None
        self.requests: int | None = None

    def __enter__(self) -> EmulatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._log, text=True, env=child_env({})
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while "OPENAI_API_VERSION" not in self.env:
            line = self.proc.stdout.readline()
            if not line:
                self._log.flush()
                fail(f"the emulator exited early: see {self.log_path}")
            m = re.match(r"export (\w+)=(.+)", line.strip())
            if m:
                self.env[m.group(1)] = shlex.split(m.group(2))[0]
            if time.monotonic() > deadline:
                fail("the emulator did not start within 60 s")
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        m = re.search(r"stopped after (\d+) requests", self.log_path.read_text())
        self.requests = int(m.group(1)) if m else None


class CountingEmulator:
    """The emulator in this process (a server thread), counting chat requests per image and phase.

    Each chat request the service answers (realtime or a Batch line) is counted against the
    image's sha256 under the current `phase`, so a benchmark can tell exactly which items were
    requested by which run. Use it where the client runs in a child process (no shared GIL).
    """

    def __init__(self, **config: object) -> None:
        from vlm_classify.emulator import Emulator, EmulatorConfig

        config.setdefault("api_key", SECRET_KEY)
        self.emu = Emulator(EmulatorConfig(**config))  # type: ignore[arg-type]
        self.phase = "start"
        self.counts: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()
        service = self.emu.service
        real_chat = service.chat

        def chat(*args: object, **kwargs: object) -> object:
            result = real_chat(*args, **kwargs)  # type: ignore[arg-type]
            if result.image is not None:
                with self._lock:
                    self.counts.setdefault(self.phase, Counter())[result.image.sha256] += 1
            return result

        service.chat = chat  # type: ignore[method-assign]

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def requested(self, phase: str) -> Counter[str]:
        """Requests per image sha256 in `phase`."""
        with self._lock:
            return Counter(self.counts.get(phase, Counter()))

    @property
    def env(self) -> dict[str, str]:
        return self.emu.env()

    def __enter__(self) -> CountingEmulator:
        self.emu.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.emu.stop()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any real OpenAI or Azure settings, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "AZURE_OPENAI_")) and k != "VLM_CLASSIFY_DEBUG"
    }
    env.update(extra)
    env.setdefault("COLUMNS", "120")
    return env


# --- running the CLI -------------------------------------------------------------------------


@dataclass
class CliRun:
    returncode: int
    wall_s: float
    cpu_s: float
    """User + system CPU of the child process (from wait4)."""
    stdout: str
    stderr: str


def start_cli(
    args: Sequence[str], env: dict[str, str], logs: Path, name: str
) -> subprocess.Popen[bytes]:
    """Start `vlm-classify ARGS` with its stdout and stderr captured to `logs/NAME.out|err`."""
    logs.mkdir(parents=True, exist_ok=True)
    out = (logs / f"{name}.out").open("wb")
    err = (logs / f"{name}.err").open("wb")
    proc = subprocess.Popen([*vlm_command(), *args], stdout=out, stderr=err, env=child_env(env))
    out.close()
    err.close()
    return proc


def wait_cli(proc: subprocess.Popen[bytes], logs: Path, name: str, started: float) -> CliRun:
    """Wait for a CLI child; its CPU time comes from the kernel's rusage for that pid."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return CliRun(
        proc.returncode,
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        (logs / f"{name}.out").read_text(errors="replace"),
        (logs / f"{name}.err").read_text(errors="replace"),
    )


def run_cli(args: Sequence[str], env: dict[str, str], logs: Path, name: str) -> CliRun:
    started = time.perf_counter()
    return wait_cli(start_cli(args, env, logs, name), logs, name, started)


def classify_args(prepared: Path, name: str, *extra: str) -> list[str]:
    return ["classify", str(prepared), "--model", MODEL, "--name", name, *extra]


# --- reading results ---------------------------------------------------------------------------


def recorded(prepared: Path, arm: str) -> dict[str, dict[str, object]]:
    """Each item's stored record (read-only; safe while another process writes)."""
    path = prepared / "runs.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT item_id, prediction, valid, error, attempts, mode, latency_ms "
            "FROM predictions WHERE arm = ?",
            (arm,),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {
        r[0]: {
            "prediction": r[1],
            "valid": bool(r[2]),
            "error": r[3],
            "attempts": r[4],
            "mode": r[5],
            "latency_ms": r[6],
        }
        for r in rows
    }


def predictions_csv(arm_dir: Path) -> list[dict[str, str]]:
    with (arm_dir / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def arm_json(prepared: Path, arm: str) -> dict[str, object]:
    return json.loads((prepared / "arms" / arm / "arm.json").read_text())


# --- the secret check --------------------------------------------------------------------------


def files_containing(roots: Sequence[Path], secret: str) -> tuple[int, list[Path]]:
    """How many files were scanned under `roots` (symlinks not followed), and which hold `secret`."""
    needle = secret.encode()
    scanned, hits = 0, []
    for root in roots:
        if root.is_file():
            paths = [root]
        else:
            paths = [
                Path(d) / f for d, _dirs, files in os.walk(root) for f in files
            ]  # os.walk does not descend into symlinked folders
        for p in paths:
            if p.is_symlink() or not p.is_file():
                continue
            scanned += 1
            if needle in p.read_bytes():
                hits.append(p)
    return scanned, hits


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out["wall_s"] = time.perf_counter() - wall
    out["cpu_s"] = time.process_time() - cpu


def verdict(ok: bool, what: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}: {what}"
