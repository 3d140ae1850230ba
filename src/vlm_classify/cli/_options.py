"""Options several commands share, declared once so their names, defaults and help agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..dataset.manifest import SPLITS
from ..openai_wire import ANSWER_MODES, DETAILS
from ..prompts import PROMPT_STYLES

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
