"""`vlm-classify prepare`: parse flags, call `dataset.prepare.prepare`, show progress and a summary."""

from __future__ import annotations

from pathlib import Path

import click
from rich import filesize
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..dataset.prepare import STANFORD_DOGS, PrepareOptions, PrepareResult, ProgressFn, prepare
from ..dataset.splits import SAMPLINGS
from ._console import err_console, out_console

_PHASES = {
    "download": ("downloading Stanford Dogs", "bytes"),
    "extract": ("extracting archive", "files"),
    "hash": ("hashing files", "files"),
    "images": ("decoding images", "images"),
}


class _CountColumn(ProgressColumn):
    """done/total, in bytes for downloads."""

    def render(self, task: Task) -> Text:
        done, total = int(task.completed), int(task.total or 0)
        if task.fields.get("unit") == "bytes":
            return Text(f"{filesize.decimal(done)}/{filesize.decimal(total)}")
        return Text(f"{done:,}/{total:,}")


class _RateColumn(ProgressColumn):
    """Items (or bytes) per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        unit = task.fields.get("unit", "")
        if unit == "bytes":
            return Text(f"{filesize.decimal(int(speed))}/s")
        return Text(f"{speed:,.0f} {unit}/s")


def _parse_split(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    """`40,5,5` -> (40, 5, 5); anything else is a one-line BadParameter."""
    parts = [p.strip() for p in value.split(",")]
    try:
        nums = tuple(int(p) for p in parts)
    except ValueError:
        nums = ()
    if len(nums) != 3:
        raise click.BadParameter(f"{value!r}: give three counts train,val,test such as 40,5,5")
    if any(n < 0 for n in nums) or sum(nums) == 0:
        raise click.BadParameter(
            f"{value!r}: counts must be >= 0 with a positive sum, such as 40,5,5"
        )
    return nums  # type: ignore[return-value]


def _suggest_split(n: int) -> str:
    """A split summing to `n` in the original study's 80/10/10 proportions."""
    held = round(n * 0.1)
    return f"{n - 2 * held},{held},{held}"


def _say(text: str) -> None:
    """One stdout line, never wrapped and never read as markup (paths may hold brackets)."""
    out_console.print(text, soft_wrap=True, markup=False)


def _summary(result: PrepareResult) -> None:
    """Counts, skips, duplicates and where the outputs are."""
    c = result.counts
    _say(f"prepared {sum(c.values()):,} images of {result.classes} classes into {result.out_dir}")
    _say("  " + " · ".join(f"{s} {n:,}" for s, n in c.items()))
    _say(
        f"  skipped {len(result.skipped):,} file(s), {len(result.duplicates)} duplicate(s) found, "
        f"{len(result.leakage)} image(s) in two splits"
    )
    for s in result.skipped[:5]:
        _say(f"    {s.path}: {s.reason}")
    if len(result.skipped) > 5:
        _say(f"    ... {len(result.skipped) - 5} more in the report")
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    _say(f"  manifest {result.manifest_path}")
    _say(f"  labels   {result.labels_path}")
    notes = f" ({len(result.notes)} note(s))" if result.notes else ""
    _say(f"  report   {result.report_path}{notes}")
    _say(f"  {result.timings.get('total_s', 0):.1f} s, {result.images_per_s:,.0f} images/s")


@click.command("prepare")
@click.argument("source")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for manifest.csv, labels.txt, images/ and the report.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    help="Images per class (defaults to the sum of --split).",
)
@click.option(
    "--split",
    "split",
    default="40,5,5",
    show_default=True,
    callback=_parse_split,
    help="Images per class for train,val,test.",
)
@click.option(
    "--sampling",
    type=click.Choice(SAMPLINGS),
    default="first",
    show_default=True,
    help="first: first usable files by path (the original study); random: seeded shuffle.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=42,
    show_default=True,
    help="Seed for --sampling random.",
)
@click.option(
    "--max-side",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Longest side of prepared images, in pixels.",
)
@click.option("--strict", is_flag=True, help="Fail when a class has too few usable images.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Decoding processes (default: all CPUs)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download cache for stanford-dogs.",
)
def prepare_cmd(
    source: str,
    out: Path,
    per_class: int | None,
    split: tuple[int, int, int],
    sampling: str,
    seed: int,
    max_side: int,
    strict: bool,
    workers: int | None,
    cache_dir: Path | None,
) -> None:
    """Sample, validate, deduplicate and split SOURCE into --out.

    SOURCE is a Stanford Dogs tree (the folder holding Images/, or Images/ itself), any
    class-per-folder tree, or the word stanford-dogs to download the official archive.
    """
    if per_class is not None and per_class != sum(split):
        raise click.BadParameter(
            f"{per_class} disagrees with --split {','.join(map(str, split))} (sum {sum(split)}): "
            f"pass a --split that sums to it, e.g. --split {_suggest_split(per_class)}",
            param_hint="--per-class",
        )
    options = PrepareOptions(
        per_class=per_class,
        split=split,
        sampling=sampling,  # type: ignore[arg-type]
        seed=seed,
        max_side=max_side,
        strict=strict,
        workers=workers,
        cache_dir=cache_dir,
    )
    if source == STANFORD_DOGS and not Path(source).exists():
        err_console.print(
            "Stanford Dogs: the official archive (about 790 MB) is downloaded into the user cache "
            "once, then reused"
        )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _CountColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as bar:
        tasks: dict[str, object] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            desc, unit = _PHASES.get(phase, (phase, ""))
            if phase not in tasks:
                tasks[phase] = bar.add_task(desc, total=total or None, unit=unit)
            bar.update(tasks[phase], completed=done, total=total or None)  # type: ignore[arg-type]

        callback: ProgressFn = on_progress
        result = prepare(source, out, options, progress=callback)
    _summary(result)
