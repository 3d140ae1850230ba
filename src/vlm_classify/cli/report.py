"""`vlm-classify report`: compare the arms of a prepared directory and write the decision report."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ._console import err_console, out_console
from ._options import FiniteFloat


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--arms: give arm names separated by commas, e.g. zero-shot,fine-tuned")
    return names


@click.command("report")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--arms", help="Arms to compare, comma-separated (default: every arm in DIR/arms).")
@click.option(
    "--baseline", help="The arm the others are compared with (default: the first zero-shot arm)."
)
@click.option(
    "--volume",
    default=10_000,
    show_default=True,
    type=FiniteFloat(min=0, min_open=True, max=1e12),
    help="Images a month, for the monthly cost comparison.",
)
@click.option(
    "--months",
    default=12,
    show_default=True,
    type=FiniteFloat(min=1),
    help="Months over which training is amortised (at least 1).",
)
@click.option(
    "--serving",
    default="realtime",
    show_default=True,
    type=click.Choice(["realtime", "batch"]),
    help="How every arm would be served, for its monthly cost (a model that cannot be served "
    "in batch is priced realtime).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [default: DIR/report].")
@click.option(
    "--pricing", type=click.Path(path_type=Path), help="Pricing file extending the shipped table."
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of the paired bootstrap.",
)
@click.option(
    "--cpu-price-per-hour",
    type=FiniteFloat(min=0),
    help="USD an hour of CPU time, to price local arms that ran on the CPU (overrides what "
    "classify recorded).",
)
@click.option(
    "--gpu-price-per-hour",
    type=FiniteFloat(min=0),
    help="USD an hour of a GPU, to price local arms that ran on one.",
)
@click.option(
    "--review-cost",
    type=FiniteFloat(min=0),
    help="USD for a person to check one image: name the confidence threshold that minimises the "
    "cost per correct label (answer when confident, send the rest to review).",
)
@click.option(
    "--error-cost",
    type=FiniteFloat(min=0),
    help="USD a wrong label costs when it ships unreviewed (rework, a refund): with "
    "--review-cost, the threshold minimises the cost per image, errors included.",
)
def report_cmd(
    prepared_dir: Path,
    arms: str | None,
    baseline: str | None,
    volume: float,
    months: float,
    serving: str,
    out: Path | None,
    pricing: Path | None,
    seed: int,
    cpu_price_per_hour: float | None,
    gpu_price_per_hour: float | None,
    review_cost: float | None,
    error_cost: float | None,
) -> None:
    """Compare the arms recorded in DIR: accuracy with intervals, paired tests, confusions,
    latency, cost and break-even, calibration and abstention. Writes results.csv, metrics.json,
    plots, report.md and a self-contained report.html into DIR/report."""
    from ..report import ReportOptions, build_report
    from ..report.confidence import ERROR_COST_NEEDS_REVIEW_COST

    if error_cost is not None and review_cost is None:  # before the report is computed
        raise UserError(ERROR_COST_NEEDS_REVIEW_COST)
    options = ReportOptions(
        arms=_names(arms),
        baseline=baseline,
        volume=volume,
        months=months,
        serving=serving,  # type: ignore[arg-type]
        out=out,
        pricing=pricing,
        seed=seed,
        cpu_price_per_hour=cpu_price_per_hour,
        gpu_price_per_hour=gpu_price_per_hour,
        review_cost=review_cost,
        error_cost=error_cost,
    )
    with err_console.status("computing the report"):
        result = build_report(prepared_dir, options)
    for sentence in result.verdict:
        out_console.print(sentence, markup=False)
    out_console.print(f"  {result.out_dir / 'report.html'}", markup=False)
    out_console.print(f"  {result.out_dir / 'report.md'}", markup=False)
    out_console.print(f"  {result.out_dir / 'metrics.json'}", markup=False)
    out_console.print(f"  {result.out_dir / 'results.csv'}", markup=False)
