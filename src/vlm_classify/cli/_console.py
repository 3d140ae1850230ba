"""Consoles shared by the CLI: results go to stdout, messages and progress to stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

out_console = Console(highlight=False, soft_wrap=True)
"""Results on stdout; soft wrap keeps long paths whole for copy and paste."""
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def progress_bar(*extra: ProgressColumn) -> Progress:
    """The progress bar of long requests runs: name, bar, done/total, EXTRA, ETA, errors (stderr).

    Tasks need an `errors` field (empty, or e.g. "3 errors").
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeRemainingColumn(),
        TextColumn("[red]{task.fields[errors]}"),
        console=err_console,
    )
