"""Run the `vlm-classify` entry point in-process and capture its exit code and output."""

from __future__ import annotations

import pytest

from vlm_classify.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`(exit code, stdout, stderr)` of `vlm-classify ARGS`."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
