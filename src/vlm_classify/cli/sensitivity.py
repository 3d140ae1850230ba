"""`vlm-classify sensitivity`: how much a zero-shot number moves with the label order."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..backends.base import LocalSettings
from ..backends.openai.wire import ANSWER_MODES
from ..classify import ClassifyOptions
from ..errors import UserError
from ..prompts import PROMPT_STYLES
from ..runner import RunnerConfig
from ..sensitivity import SensitivityOptions, run_sensitivity
from ._console import err_console, out_console


@click.command("sensitivity")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--model", required=True, help="A zero-shot model: openai/..., azure/..., hf/...")
@click.option("--name", required=True, help="The study's name (its arms: NAME.order0...).")
@click.option("--orders", default=3, show_default=True, type=click.IntRange(1, 50),
              help="Shuffled label orders besides the prepared one.")  # fmt: skip
@click.option("--items", default=100, show_default=True, type=click.IntRange(2),
              help="Test items in the seeded subsample.")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the subsample.")
@click.option("--prompt", type=click.Choice(PROMPT_STYLES), default="full", show_default=True)
@click.option("--answer", type=click.Choice([*ANSWER_MODES, "score"]),
              help="enum or text (chat models, default enum); score or text (hf/, default score).")  # fmt: skip
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="hf/ models.")  # fmt: skip
def sensitivity_cmd(
    prepared_dir: Path,
    model: str,
    name: str,
    orders: int,
    items: int,
    seed: int,
    prompt: str,
    answer: str | None,
    concurrency: int,
    device: str,
) -> None:
    """Ask a zero-shot MODEL the same seeded subsample of DIR's test split with the label list in
    ORDERS+1 orders, and say how much its accuracy and its answers move: how much of a
    zero-shot number is the prompt's luck. Each order is an arm (NAME.orderK), resumable; the
    result goes to DIR/sensitivity/NAME.json and the report."""
    hf = model.startswith("hf/")
    if (answer == "score" and not hf) or (answer == "enum" and hf):
        raise UserError(
            f"--answer {answer}: {model} takes " + ("score or text" if hf else "enum or text")
        )
    options = SensitivityOptions(
        classify=ClassifyOptions.model_validate(
            {
                "model": model,
                "name": name,
                "prompt": prompt,
                "answer": answer if answer in ANSWER_MODES else "enum",
                "runner": RunnerConfig(concurrency=concurrency),
                "local": LocalSettings.model_validate(
                    {"device": device, "prompt": prompt, "answer": answer or "score"}
                    if hf
                    else {"device": device}
                ),
            }
        ),
        orders=orders,
        items=items,
        seed=seed,
    )
    result = run_sensitivity(
        prepared_dir, options, on_status=lambda m: err_console.print(f"  {escape(m)}")
    )
    doc = result.doc
    emulated = " [yellow](emulated)[/]" if doc["emulated"] else ""
    out_console.print(f"{name}: {escape(doc['summary'])}{emulated}")
    out_console.print(f"  {result.path}")
