"""`vlm-classify latency`: measure a model's latency at several concurrency levels, or summarise
an existing per-request CSV (the original study's table)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.progress import (
    TaskID,
)
from rich.table import Table

from ..errors import UserError
from ..latency import (
    LatencyOptions,
    LatencyProgress,
    measure_latency,
    summarize_csv,
    write_csv,
)
from ..prompts import PROMPT_STYLES
from ._console import out_console, progress_bar
from ._options import detail_option, split_option, timeout_option

_SHOWN = [
    ("mean_ms", "mean"),
    ("p50_ms", "p50"),
    ("p90_ms", "p90"),
    ("p95_ms", "p95"),
    ("p99_ms", "p99"),
    ("min_ms", "min"),
    ("max_ms", "max"),
    ("std_dev_ms", "std"),
]
"""Columns shown (ms), with their short headings."""


def _levels(text: str) -> list[int]:
    try:
        levels = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        levels = []
    if not levels or any(c < 1 or c > 1024 for c in levels):
        raise UserError(
            f"--concurrency {text!r}: give integers 1..1024 separated by commas, e.g. 1,4,16"
        )
    return levels


def _table(rows: list[dict], keys: list[str], title: str) -> Table:
    """Statistics as rows and models (or concurrency levels) as columns: fits a narrow terminal."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("")
    for r in rows:
        table.add_column(escape(" ".join(str(r.get(k, "")) for k in keys)), justify="right")
    table.add_row("ok / errors", *(f"{r['success_count']} / {r['error_count']}" for r in rows))
    for key, label in _SHOWN:
        table.add_row(f"{label} ms", *("" if r[key] is None else f"{r[key]:.2f}" for r in rows))
    table.add_row("req/s (1000/mean)", *(_num(r["throughput_rps_est"]) for r in rows))
    if rows and "throughput_rps_measured" in rows[0]:
        table.add_row("req/s measured", *(_num(r["throughput_rps_measured"]) for r in rows))
    return table


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


@click.command("latency")
@click.argument("prepared_dir", metavar="DIR", required=False, type=click.Path(path_type=Path))
@click.option("--model", help="PROVIDER/MODEL to measure, e.g. azure/gpt-4o-2024-08-06.")
@click.option("--name", help="The arm's name: results go to DIR/arms/NAME/latency*.csv.")
@click.option(
    "--requests",
    default=600,
    show_default=True,
    type=click.IntRange(1),
    help="Requests per concurrency level (cycling through the split).",
)
@click.option(
    "--concurrency",
    default="1,4,16",
    show_default=True,
    help="Concurrency levels, run one after the other.",
)
@split_option
@click.option("--prompt", default="full", show_default=True, type=click.Choice(PROMPT_STYLES))
@detail_option
@timeout_option
@click.option(
    "--from-csv",
    "from_csv",
    type=click.Path(path_type=Path),
    help="Summarise this per-request CSV (model, latency_ms, error) instead of measuring.",
)
@click.option(
    "--trim-first",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="With --from-csv: drop each model's first N requests (the warm-up).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--out",
    "out_csv",
    type=click.Path(path_type=Path),
    help="With --from-csv: also write the summary CSV here.",
)
def latency_cmd(
    prepared_dir: Path | None,
    model: str | None,
    name: str | None,
    requests: int,
    concurrency: str,
    split: str,
    prompt: str,
    detail: str,
    timeout_s: float,
    from_csv: Path | None,
    trim_first: int,
    as_json: bool,
    out_csv: Path | None,
) -> None:
    """Measure MODEL's end-to-end latency on DIR's SPLIT at each concurrency level, the way the
    original study did (timed around the SDK call, up to 3 attempts, failures counted apart).

    \b
    With --from-csv FILE, summarise an existing per-request CSV instead (no DIR needed):
      vlm-classify latency --from-csv per_request_latencies.csv
    """
    if from_csv is not None:
        from ..latency import STAT_FIELDS

        rows = summarize_csv(from_csv, trim_first=trim_first)
        keys = [k for k in rows[0] if k not in STAT_FIELDS] if rows else ["model"]
        if out_csv is not None:
            write_csv(out_csv, rows, [*keys, *STAT_FIELDS])
        if as_json:
            out_console.print_json(json.dumps(rows))
        else:
            out_console.print(_table(rows, keys, f"{from_csv}"))
        return
    if prepared_dir is None or not model or not name:
        raise UserError("latency needs DIR, --model and --name (or --from-csv FILE to summarise)")
    options = LatencyOptions(
        model=model,
        name=name,
        requests=requests,
        concurrency=_levels(concurrency),
        split=split,  # type: ignore[arg-type]
        prompt=prompt,  # type: ignore[arg-type]
        detail=detail,  # type: ignore[arg-type]
        timeout_s=timeout_s,
    )
    with progress_bar() as bar:
        tasks: dict[int, TaskID] = {}

        def on_progress(p: LatencyProgress) -> None:
            if p.concurrency not in tasks:
                tasks[p.concurrency] = bar.add_task(
                    f"{name} x{p.concurrency}", total=p.total, errors=""
                )
            errors = f"{p.errors} errors" if p.errors else ""
            bar.update(tasks[p.concurrency], completed=p.done, errors=errors)

        result = measure_latency(prepared_dir, options, on_progress=on_progress)
    if as_json:
        out_console.print_json(json.dumps(result.levels))
    else:
        title = f"{name}: {model}" + (" (emulated)" if result.emulated else "")
        rows = [{"level": f"concurrency {r['concurrency']}"} | r for r in result.levels]
        out_console.print(_table(rows, ["level"], title))
    if result.note:  # a served model's server did not do all that was asked
        out_console.print(f"  {escape(result.note)}")
    if result.emulated:
        out_console.print(
            "[yellow]emulated[/]: latencies come from the built-in emulator, not a real service"
        )
    out_console.print(f"  {result.arm_dir / 'latency.csv'}")
    out_console.print(f"  {result.arm_dir / 'latency-samples.csv'}")
