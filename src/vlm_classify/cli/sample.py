"""`vlm-classify sample`: generate an offline, Stanford-Dogs-shaped image tree."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..dataset.synthetic import BREEDS, DEFECTS, make_sample
from ._console import out_console


def _say(text: str) -> None:
    out_console.print(text, soft_wrap=True, markup=False)


@click.command("sample")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--classes",
    default=10,
    show_default=True,
    type=click.IntRange(2, len(BREEDS)),
    help="Number of breeds.",
)
@click.option(
    "--per-class",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Good images per breed (50 fits prepare's default split 40,5,5).",
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
    _say(f"wrote {classes} classes x {per_class} generated images under {root / 'Images'}")
    if defects:
        _say(
            f"  plus {len(DEFECTS)} deliberately bad files in {BREEDS[0]}/ for prepare to skip: "
            + ", ".join(DEFECTS)
        )
    named = root if root.name else root.resolve()  # `sample .` still gives a sibling name
    prepared = named.parent / f"{named.name}-prepared"
    count = "" if per_class == 50 else f" --per-class {per_class}"
    _say(
        f"next: vlm-classify prepare {shlex.quote(str(root))} --out {shlex.quote(str(prepared))}{count}"
    )
