"""`vlm-classify curve`: a learning curve, accuracy against train images per class."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..backends.base import LocalSettings
from ..curve import CurveOptions, parse_shots, run_curve
from ._console import err_console, out_console
from ._options import local_options


@click.command("curve")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="The base model fine-tuned at each size.")
@click.option("--name", required=True, help="The curve's name: DIR/curves/NAME.")
@click.option(
    "--shots",
    default="1,2,5,10,20,all",
    show_default=True,
    help="Train images per class at each point ('all': the whole train split).",
)
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the subsets.")
@click.option("--epochs", type=click.IntRange(1), help="Epochs at each point.")
@click.option("--batch-size", type=click.IntRange(1), help="Local models: batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Local models.")
@click.option("--lora-rank", type=click.IntRange(1), help="hf/ models.")
@click.option(
    "--lr-multiplier", type=click.FloatRange(min=0, min_open=True), help="The fine-tuning API."
)
@click.option("--yes", is_flag=True, help="Run cloud fine-tunes (they cost money).")
@local_options
def curve_cmd(
    prepared_dir: Path,
    model: str,
    name: str,
    shots: str,
    seed: int,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    lora_rank: int | None,
    lr_multiplier: float | None,
    yes: bool,
    device: str,
    workers: int,
    offline: bool,
    cpu_price_per_hour: float | None,
    gpu_price_per_hour: float | None,
) -> None:
    """How accuracy grows with labelled images: fine-tune MODEL on nested subsets of DIR's train
    split (1, 2, 5... images per class, seeded; each contains the smaller), score each on the
    whole test split, and fit where more data stops paying.

    Local models (clip/, cnn/, hf/) run here. Through the fine-tuning API each point costs money:
    the command prints every point's cost and runs them only with --yes. Each point is an
    ordinary job and arm (NAME.kK.job, NAME.kK), so an interrupted curve resumes. Results in
    DIR/curves/NAME/ (curve.json, curve.csv, curve.png).
    """
    options = CurveOptions(
        model=model,
        name=name,
        shots=parse_shots(shots),
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lora_rank=lora_rank,
        lr_multiplier=lr_multiplier,
        yes=yes,
        local=LocalSettings.model_validate(
            {
                "device": device,
                "workers": workers,
                "offline": offline,
                "cpu_price_per_hour": cpu_price_per_hour,
                "gpu_price_per_hour": gpu_price_per_hour,
            }
        ),
    )
    result = run_curve(
        prepared_dir, options, on_status=lambda m: err_console.print(f"  {escape(m)}")
    )
    if not result.ran:
        out_console.print(
            f"{name}: {len(options.shots)} fine-tunes through the API, about "
            f"${result.cost_usd or 0:,.2f} in all: rerun with --yes to run them"
        )
        return
    for p in result.points:
        out_console.print(
            f"  {p['shots']:>4} a class ({p['train_images']} images): {p['accuracy']:.2%} "
            f"[{p['ci_low']:.1%}, {p['ci_high']:.1%}] on {p['n']} test images"
        )
    out_console.print(f"{name}: {result.summary}")
    out_console.print(f"  {result.out_dir / 'curve.json'}")
    out_console.print(f"  {result.out_dir / 'curve.png'}")
