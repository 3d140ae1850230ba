"""`vlm-classify estimate`: tokens and dollars for zero-shot, Batch, fine-tuning and hosting."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..estimate import Estimate, EstimateOptions, LineItem, estimate
from ._console import out_console
from ._options import answer_option, detail_option, prompt_option, training_prompt_option


@click.command("estimate")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--model", required=True, help="PROVIDER/MODEL to price, e.g. azure/gpt-4o-2024-08-06."
)
@click.option(
    "--epochs", default=2, show_default=True, type=click.IntRange(1, 50), help="Fine-tuning epochs."
)
@prompt_option("System prompt of zero-shot requests (full lists the labels).")
@training_prompt_option(
    "System prompt of the fine-tuning examples and fine-tuned requests [default: --prompt]."
)
@detail_option
@answer_option('Base model answer: enum = structured {"label": ...}, text = the bare label.')
@click.option(
    "--pricing",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A JSON price file that extends or overrides the shipped table (docs/pricing.md).",
)
@click.option(
    "--months",
    default=12,
    show_default=True,
    type=click.FloatRange(1, 1200),
    help="Months the report spreads training over: retirement dates within them are warned of.",
)
@click.option(
    "--calibrate",
    metavar="ARM",
    help="Count request tokens from what arm ARM of DIR (the same model) was billed, instead "
    "of the rule alone.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of a table."
)
def estimate_cmd(
    prepared_dir: Path,
    model: str,
    epochs: int,
    prompt: str,
    training_prompt: str | None,
    detail: str,
    answer: str,
    pricing: Path | None,
    months: float,
    calibrate: str | None,
    as_json: bool,
) -> None:
    """Estimate what the study costs on the prepared dataset DIR: offline, from the manifest."""
    options = EstimateOptions.model_validate(
        {
            "model": model,
            "epochs": epochs,
            "prompt": prompt,
            "training_prompt": training_prompt,
            "detail": detail,
            "answer": answer,
            "pricing": pricing,
            "months": months,
            "calibrate": calibrate,
        }
    )
    result = estimate(prepared_dir, options)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    _print_table(result)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:,.4f}"


def _print_table(result: Estimate) -> None:
    o = result.options
    title = f"Cost estimate: {result.model}"
    if result.calibration is not None:
        title += f" (calibrated from arm {result.calibration.arm}'s bill)"
    table = Table(title=title, title_justify="left")
    table.add_column("line item")
    table.add_column("requests", justify="right")
    table.add_column("input tokens", justify="right")
    table.add_column("output tokens", justify="right")
    table.add_column("USD", justify="right")

    def row(name: str, item: LineItem | None) -> None:
        if item is None:
            table.add_row(name, "-", "-", "-", "n/a")
        else:
            table.add_row(
                name,
                f"{item.requests:,}",
                f"{item.input_tokens:,}",
                f"{item.output_tokens:,}",
                _usd(item.cost_usd),
            )

    row(f"zero-shot, Batch API ({o.prompt} prompt)", result.batch)
    row(f"zero-shot, realtime ({o.prompt} prompt)", result.realtime)
    tr = result.training
    row(
        f"training ({tr.examples:,} examples x {tr.epochs} epochs)" if tr else "training",
        tr,
    )
    row(f"fine-tuned, realtime ({o.ft_prompt} prompt)", result.finetuned)
    h = result.hosting
    table.add_row("hosting (fine-tuned deployment)", "", "", "", f"{_usd(h.usd_per_hour)}/h")
    out_console.print(table)
    for w in result.lifecycle:
        out_console.print(f"[bold yellow]warning:[/] {escape(w)}", soft_wrap=True)
    splits = result.splits
    out_console.print(
        f"dataset: {splits.get('train', 0):,} train / {splits.get('val', 0):,} val / "
        f"{splits.get('test', 0):,} test images; detail={o.detail}"
    )
    if tr is not None:
        out_console.print(
            f"training tokens: {tr.tokens:,} ({tr.tokens_per_example:,.1f} per example per epoch)"
        )
    out_console.print(
        escape(f"prices: {result.price_key}, {result.price_source} ({result.price_date})"),
        soft_wrap=True,
    )
    for a in result.assumptions[1:]:
        out_console.print(f"[dim]- {escape(a)}[/]", soft_wrap=True)
