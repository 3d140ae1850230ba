"""`--rpm` and `--tpm`, counted where they matter: at the server, by arrival time.

The emulator logs every chat request's arrival and tokens (`stats.chat_arrivals()`); each test
checks that no sliding window of the limiter's period held more than the cap. The window is a
minute in production; most tests shorten it (`rate_window_s`) to stay fast, and two run the real
minute through the CLI with a handful of items.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from pathlib import Path

import pytest

from cli_support import run_cli
from conftest import make_jpeg, make_prepared_dir
from emulator_support import busiest_window, gaps
from vlm_classify.backends.openai.chat import ChatSettings, OpenAIChatBackend, parse_openai_model
from vlm_classify.classify import ClassifyOptions, classify
from vlm_classify.dataset.manifest import (
    MANIFEST_NAME,
    ManifestRow,
    read_labels,
    read_manifest,
    write_manifest,
)
from vlm_classify.emulator import Emulator, EmulatorConfig
from vlm_classify.limits import RateLimiter
from vlm_classify.runner import RunnerConfig

MODEL = "openai/gpt-4o-2024-08-06"
WINDOW = 1.0
"""The shortened period of the tests through the emulator."""
SLACK = 0.1
"""Their margin for the varying time from release to arrival (0.5 s of a minute in production)."""


@pytest.fixture
def emu(small_prepared: Path, monkeypatch: pytest.MonkeyPatch):
    with Emulator(EmulatorConfig(manifests=[small_prepared])) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        yield e


def _runner(**kw: object) -> RunnerConfig:
    base: dict[str, object] = {
        "concurrency": 8,  # more than the caps allow: the limiter, not the pool, sets the pace
        "rate_window_s": WINDOW,
        "rate_slack_s": SLACK,
        "request_timeout_s": 10,
    }
    return RunnerConfig.model_validate({**base, **kw})


def _backend(prepared: Path, detail: str = "low") -> OpenAIChatBackend:
    return OpenAIChatBackend(
        parse_openai_model(MODEL),
        read_labels(prepared),
        prepared,
        ChatSettings(detail=detail),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("rpm", "items", "cap"), [(5, 12, 5), (2.5, 6, 2)])
def test_rpm_holds_in_every_window_at_the_server(
    small_prepared: Path, emu: Emulator, rpm: float, items: int, cap: int
) -> None:
    """An integer cap and a fractional one (2.5 a window: never 3 in one window)."""
    options = ClassifyOptions(
        model=MODEL, name=f"rpm{rpm}", split="train", limit=items, runner=_runner(rpm=rpm)
    )
    start = time.perf_counter()
    classify(small_prepared, options)
    elapsed = time.perf_counter() - start
    arrivals = emu.stats.chat_arrivals()
    assert len(arrivals) == items
    assert busiest_window(arrivals, WINDOW) == cap  # never more, and the cap is used in full
    # evenly spaced from the start: no burst (a burst of `cap` is what aiolimiter let through)
    assert min(gaps(arrivals)) >= (WINDOW + SLACK) / rpm * 0.8
    # and not slower than the cap: `cap` requests per window-and-slack
    assert elapsed < (items / cap) * (WINDOW + SLACK) + 1.5


def test_a_large_rpm_keeps_its_pace() -> None:
    """60,000 a minute is one request a millisecond: timer wake-ups must not slow it down."""

    async def go() -> float:
        limiter = RateLimiter(rpm=60_000, period=60, slack=0.5)
        start = time.perf_counter()
        for _ in range(500):
            await limiter.acquire()
        return time.perf_counter() - start

    elapsed = asyncio.run(go())
    ideal = 499 * 60.5 / 60_000
    assert ideal * 0.97 <= elapsed < ideal + 0.3


def test_a_fractional_cap_below_one_spaces_releases() -> None:
    """0.5 a window: one release every two windows, never two in one."""

    async def go() -> list[float]:
        limiter = RateLimiter(rpm=0.5, period=0.1, slack=0.0)
        times = []
        for _ in range(3):
            await limiter.acquire()
            times.append(time.monotonic())
        return times

    times = asyncio.run(go())
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(times))


def test_a_request_over_the_token_budget_goes_alone_without_deadlock() -> None:
    """250 tokens against 100 a window: each goes alone, 2.5 windows after the one before."""

    async def go() -> list[float]:
        limiter = RateLimiter(tpm=100, period=0.2, slack=0.0)
        times = []
        for _ in range(3):
            await asyncio.wait_for(limiter.acquire(250), timeout=5)
            times.append(time.monotonic())
        return times

    times = asyncio.run(go())
    assert all(0.49 <= b - a < 0.8 for a, b in itertools.pairwise(times))


def _mixed_prepared(root: Path) -> Path:
    """Test items of two sizes: at detail high, 1 tile (255 image tokens) or 6 (1,105)."""
    make_prepared_dir(root, ["Beagle", "Chihuahua"], {"test": 4})
    rows = []
    for i, row in enumerate(read_manifest(root)):
        if i % 2:
            path = make_jpeg(root / row.image_path, size=(1100, 600), seed=100 + i)
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            row = row.model_copy(
                update={
                    "width": 1100,
                    "height": 600,
                    "bytes": len(data),
                    "image_sha256": digest,
                    "source_sha256": digest,
                }
            )
        rows.append(row)
    write_manifest(root / MANIFEST_NAME, rows)
    return root


def test_tpm_holds_in_every_window_at_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = _mixed_prepared(tmp_path / "mixed")
    with Emulator(EmulatorConfig(manifests=[prepared])) as e:
        for k, v in e.env().items():
            monkeypatch.setenv(k, v)
        backend = _backend(prepared, detail="high")
        by_id: dict[str, ManifestRow] = {r.id: r for r in read_manifest(prepared)}
        estimates = sorted(backend.estimate_tokens(r) for r in by_id.values())
        assert estimates[0] < estimates[-1] - 800  # two sizes, two costs
        tpm = 2.2 * estimates[-1]  # two large requests fit in a window, three do not
        options = ClassifyOptions(model=MODEL, name="tpm", detail="high", runner=_runner(tpm=tpm))
        classify(prepared, options)
        arrivals = e.stats.chat_arrivals()
    assert len(arrivals) == len(by_id) and all(a.status == 200 for a in arrivals)
    # the client counts what the server counts: prompt tokens plus the allowed completion
    assert sorted(a.tokens for a in arrivals) == estimates
    assert busiest_window(arrivals, WINDOW, lambda a: a.tokens) <= tpm


# --- the real minute, through the CLI ----------------------------------------------------------


def _cli(prepared: Path, name: str, *flags: str) -> list[str]:
    return ["classify", str(prepared), "--model", MODEL, "--name", name, "--limit", "3", *flags]


def test_rpm_30_sends_a_request_every_2_seconds(
    small_prepared: Path, emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(_cli(small_prepared, "rpm30", "--rpm", "30"), capsys)
    assert code == 0, err
    spacing = gaps(emu.stats.chat_arrivals())
    assert len(spacing) == 2 and all(1.95 <= g < 2.4 for g in spacing), spacing  # not 1 s


def test_tpm_spaces_requests_by_their_tokens(
    small_prepared: Path, emu: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    item = next(r for r in read_manifest(small_prepared) if r.split == "test")
    cost = _backend(small_prepared).estimate_tokens(item)  # every test item costs the same
    tpm = 60 * cost  # a request a second
    code, _out, err = run_cli(_cli(small_prepared, "tpm", "--tpm", str(tpm)), capsys)
    assert code == 0, err
    arrivals = emu.stats.chat_arrivals()
    assert [a.tokens for a in arrivals] == [cost] * 3
    spacing = gaps(arrivals)
    assert len(spacing) == 2 and all(0.97 <= g < 1.4 for g in spacing), spacing
