"""`vlm-classify sample`: generate an offline, Stanford-Dogs-shaped image tree."""

from __future__ import annotations

from pathlib import Path

import click

from ..dataset.synthetic import BREEDS, make_sample
from ._console import out_console


@click.command("sample")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--classes",
    default=10,
    show_default=True,
    type=click.IntRange(1, len(BREEDS)),
    help="Number of breeds.",
)
@click.option(
    "--per-class", default=12, show_default=True, type=click.IntRange(1), help="Images per breed."
)
@click.option(
    "--defects/--no-defects",
    default=True,
    show_default=True,
    help="Add a few bad files (empty, truncated, not an image, a duplicate) for `prepare` to catch.",
)
def sample_cmd(out: Path, classes: int, per_class: int, defects: bool) -> None:
    """Generate a small class-per-folder image tree shaped like Stanford Dogs, for trying the tool offline."""
    root = make_sample(out, classes=classes, per_class=per_class, defects=defects)
    out_console.print(
        f"wrote {classes} classes x {per_class} generated images under {root / 'Images'}"
    )
