"""Options several commands share, declared once so their names, defaults and help agree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..dataset.manifest import SPLITS
from ..openai_wire import DETAILS

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
