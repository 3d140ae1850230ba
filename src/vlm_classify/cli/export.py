"""`vlm-classify export`: fine-tuning files and Batch API input for a prepared directory."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..backends.openai.export import ExportOptions, ExportResult, export
from ._console import err_console, out_console
from ._options import answer_option, detail_option, prompt_option, training_prompt_option


@click.command("export")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--model", required=True, help="openai/MODEL or azure/DEPLOYMENT named in the Batch lines."
)
@prompt_option("System prompt of the Batch requests (full lists the labels).")
@training_prompt_option("System prompt of the fine-tuning examples [default: --prompt].")
@detail_option
@answer_option("Batch answers: structured output (one of the labels) or free text.")
def export_cmd(
    prepared_dir: Path,
    model: str,
    prompt: str,
    training_prompt: str | None,
    detail: str,
    answer: str,
) -> None:
    """Write DIR/jsonl/: train.jsonl and val.jsonl for fine-tuning, test-batch.jsonl for the Batch API."""
    options = ExportOptions.model_validate(
        {
            "model": model,
            "prompt": prompt,
            "training_prompt": training_prompt,
            "detail": detail,
            "answer": answer,
        }
    )
    with err_console.status("writing JSONL files"):
        result = export(prepared_dir, options)
    _print(result)


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:,.1f} {unit}"


def _print(result: ExportResult) -> None:
    table = Table(title=f"Exported to {escape(str(result.out_dir))}", title_justify="left")
    table.add_column("file")
    table.add_column("use")
    table.add_column("lines", justify="right")
    table.add_column("size", justify="right")
    uses = {
        "train": "fine-tuning training",
        "val": "fine-tuning validation",
        "test-batch": "Batch API input",
    }
    for f in result.files:
        table.add_row(escape(f.path.name), uses[f.kind], f"{f.lines:,}", _size(f.bytes))
    out_console.print(table)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
