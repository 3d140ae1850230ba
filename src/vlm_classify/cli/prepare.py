"""`vlm-classify prepare`: parse flags, call `dataset.prepare.prepare`, show progress and a summary."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import ValidationError
from rich import filesize
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..dataset.prepare import STANFORD_DOGS, PrepareOptions, PrepareResult, prepare
from ..dataset.splits import SAMPLINGS
from ._console import err_console, out_console

_PHASES = {
    "download": ("downloading Stanford Dogs", "bytes"),
    "extract": ("extracting archive", "files"),
    "hash": ("hashing files", "files"),
    "images": ("decoding images", "images"),
}
_FLAGS = {"per_class": "--per-class", "split": "--split", "max_side": "--max-side"}
_SHOWN_NOTES = 10
_FOLD_WARNINGS = 3
"""More short classes than this are summed up in one warning line (all are in the report)."""


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


def _parse_split(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[int, int, int] | None:
    """`40,5,5` -> (40, 5, 5); the counts themselves are checked by PrepareOptions."""
    if value is None:
        return None
    try:
        nums = tuple(int(p.strip()) for p in value.split(","))
    except ValueError:
        nums = ()
    if len(nums) != 3:
        raise click.BadParameter(f"{value!r}: give three counts train,val,test such as 40,5,5")
    return nums  # type: ignore[return-value]


def _n(count: int, word: str, plural: str | None = None) -> str:
    """`1 class`, `2 classes`."""
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


def _say(text: str) -> None:
    """One stdout line, never wrapped and never read as markup (paths may hold brackets)."""
    out_console.print(text, soft_wrap=True, markup=False)


def _warn(text: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)


def _summary(result: PrepareResult) -> None:
    """Counts, skips, duplicates, warnings, notes and where the outputs are."""
    c = result.counts
    _say(
        f"prepared {_n(sum(c.values()), 'image')} of {_n(result.classes, 'class', 'classes')} "
        f"into {result.out_dir}"
    )
    _say("  " + " · ".join(f"{s} {n:,}" for s, n in c.items()))
    _say(
        f"  skipped {_n(len(result.skipped), 'file')}, "
        f"{_n(len(result.duplicates), 'duplicate')} found, "
        f"{_n(len(result.leakage), 'image')} in two splits"
    )
    for s in result.skipped[:5]:
        _say(f"    {s.path}: {s.reason}")
    if len(result.skipped) > 5:
        _say(f"    ... {len(result.skipped) - 5} more in the report")
    short = result.short_classes
    if len(short) > _FOLD_WARNINGS:
        listed = ", ".join(f"{label}: {n}" for label, n in list(short.items())[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        _warn(
            f"{len(short)} classes have fewer than {result.wanted} usable images ({listed}{more}); "
            f"their train split shrinks first; each is listed under 'warnings' in "
            f"{result.report_path}"
        )
    else:
        for w in result.warnings:
            _warn(w)
    _say(f"  manifest {result.manifest_path}")
    _say(f"  labels   {result.labels_path}")
    _say(f"  report   {result.report_path}")
    if result.notes:
        _say(f"  {_n(len(result.notes), 'note')}:")
        for note in result.notes[:_SHOWN_NOTES]:
            _say(f"    {note}")
        if len(result.notes) > _SHOWN_NOTES:
            _say(f"    ... {len(result.notes) - _SHOWN_NOTES} more in the report")
    _say(f"  {result.timings.get('total_s', 0):.1f} s, {result.images_per_s:,.0f} images/s")


def _options(**given: object) -> PrepareOptions:
    """PrepareOptions from the flags; its validation errors become usage errors naming the flag."""
    try:
        return PrepareOptions.model_validate(given)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "per_class"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise click.BadParameter(msg, param_hint=_FLAGS.get(field, f"--{field}")) from None


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
    help="Images per class (default: the sum of --split; alone, it is split 80/10/10).",
)
@click.option(
    "--split",
    "split",
    callback=_parse_split,
    help="Images per class for train,val,test.  [default: 40,5,5]",
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
    split: tuple[int, int, int] | None,
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
    options = _options(
        per_class=per_class,
        split=split,
        sampling=sampling,
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
    bar: Progress | None = None
    tasks: dict[str, object] = {}

    def on_progress(phase: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # started on the first report, so an early error prints alone
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _CountColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                console=err_console,
            )
            bar.start()
        desc, unit = _PHASES.get(phase, (phase, ""))
        if phase not in tasks:
            tasks[phase] = bar.add_task(desc, total=total or None, unit=unit)
        bar.update(tasks[phase], completed=done, total=total or None)  # type: ignore[arg-type]

    try:
        result = prepare(source, out, options, progress=on_progress)
    finally:
        if bar is not None:
            bar.stop()
    _summary(result)
