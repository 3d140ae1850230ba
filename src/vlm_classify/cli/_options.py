"""Options several commands share, declared once so their names, defaults and help agree."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from ..backends.openai.wire import ANSWER_MODES, DETAILS
from ..dataset.manifest import SPLITS
from ..prompts import PROMPT_STYLES


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets them through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        lo = None if self.min is None else f"{self.min:g}{'<' if self.min_open else '<='}"
        hi = None if self.max is None else f"{'<' if self.max_open else '<='}{self.max:g}"
        return f"{lo or ''}x{hi or ''}"


split_option = click.option(
    "--split",
    default="test",
    show_default=True,
    type=click.Choice(SPLITS),
    help="Which split to run.",
)
detail_option = click.option(
    "--detail",
    default="low",
    show_default=True,
    type=click.Choice(DETAILS),
    help="Image detail: low is 85 tokens an image (the study's choice); auto is counted as high.",
)
timeout_option = click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Per-request timeout (s).",
)


def poll_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--poll SECONDS` between status checks of `what`."""
    return click.option(
        "--poll",
        "poll_s",
        default=10.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help=f"Seconds between {what} status checks.",
    )


def prompt_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--prompt full|short`: whether the system prompt lists the labels."""
    return click.option(
        "--prompt", default="full", show_default=True, type=click.Choice(PROMPT_STYLES), help=help
    )


def training_prompt_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--training-prompt full|short`, defaulting to `--prompt`."""
    return click.option(
        "--training-prompt", default=None, type=click.Choice(PROMPT_STYLES), help=help
    )


def answer_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--answer enum|text`: structured output limited to the labels, or free text."""
    return click.option(
        "--answer", default="enum", show_default=True, type=click.Choice(ANSWER_MODES), help=help
    )


def local_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--device`, `--workers`, `--offline` and the hourly prices: how a local model runs and
    what its compute costs (recorded for the report)."""
    options = [
        click.option(
            "--device",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "cpu", "cuda", "mps"]),
            help="Local models: where to run (auto: a CUDA GPU, else MPS, else the CPU).",
        ),
        click.option(
            "--workers",
            default=0,
            show_default=True,
            type=click.IntRange(0, 64),
            help="Local models: processes decoding images (0: the main process).",
        ),
        click.option(
            "--offline",
            is_flag=True,
            help="Local models: use local files only (as HF_HUB_OFFLINE=1 does).",
        ),
        click.option(
            "--cpu-price-per-hour",
            type=FiniteFloat(min=0),
            help="USD an hour of CPU time, recorded to price a local model by compute time.",
        ),
        click.option(
            "--gpu-price-per-hour",
            type=FiniteFloat(min=0),
            help="USD an hour of the GPU, recorded to price a local model by compute time.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func
