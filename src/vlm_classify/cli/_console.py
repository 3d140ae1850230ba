"""Consoles shared by the CLI: results go to stdout, messages and progress to stderr."""

from __future__ import annotations

from rich.console import Console

out_console = Console(highlight=False, soft_wrap=True)
"""Results on stdout; soft wrap keeps long paths whole for copy and paste."""
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
