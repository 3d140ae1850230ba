"""`vlm-classify classify`: run one arm over a split, realtime or through the Batch API."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape
from rich.progress import TaskID, TextColumn

from ..backends.base import LocalSettings
from ..backends.openai.wire import ANSWER_MODES
from ..backends.registry import PROVIDERS
from ..classify import ClassifyOptions, classify
from ..errors import EXIT_ITEM_ERRORS, UserError
from ..prompts import PROMPT_STYLES
from ..runner import Progress as RunProgress
from ..runner import RunnerConfig
from ._console import err_console, out_console, progress_bar
from ._options import (
    detail_option,
    local_options,
    poll_option,
    split_option,
    timeout_option,
)

LOCAL_PROVIDERS = {p.name for p in PROVIDERS.values() if p.kind == "local"}
CHAT = {
    "concurrency", "prompt", "answer", "detail", "logprobs", "rpm", "tpm", "timeout_s",
    "max_attempts", "poll_s",
}  # fmt: skip
"""Options of the request path (openai/, azure/)."""
LOCAL = {
    "batch_size", "device", "workers", "offline", "cpu_price_per_hour", "gpu_price_per_hour",
}  # fmt: skip
"""Options of every model that runs here."""
USES: dict[str, set[str]] = {
    "openai": CHAT,
    "azure": CHAT,
    "clip": LOCAL | {"templates"},
    "cnn": LOCAL,
    "hf": LOCAL - {"workers"} | {"prompt", "answer", "max_new_tokens", "label_batch"},
}
"""The options each provider reads; any other given on the command line is refused."""


def refuse_options_that_do_not_apply(model: str) -> None:
    """An option given on the command line that the model's provider ignores is one line, not
    a silent no-op."""
    ctx = click.get_current_context()
    provider = model.partition("/")[0]
    uses = USES.get(provider)
    if uses is None:
        return  # an unknown provider: the registry's line names the known ones
    for param in ctx.command.params:
        if (
            param.name
            and param.name in set().union(*USES.values()) - uses
            and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE
        ):
            flag = max(param.opts, key=len)
            takers = sorted(f"{p}/" for p, names in USES.items() if param.name in names)
            raise UserError(
                f"{flag} is for {', '.join(takers)} models: {model} does not use it; drop it"
            )


@click.command("classify")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--model",
    required=True,
    help="PROVIDER/MODEL: openai/gpt-4o-2024-08-06, azure/<deployment>, "
    "clip/ViT-B-32@laion2b_s34b_b79k, hf/Qwen/Qwen2-VL-2B-Instruct (or a model folder), "
    "clip/arm:NAME, cnn/arm:NAME or hf/arm:NAME (a model trained by finetune).",
)
@click.option(
    "--name", required=True, help="The arm's name, e.g. zero-shot (its folder under DIR/arms/)."
)
@split_option
@click.option(
    "--mode", default="realtime", show_default=True, type=click.Choice(["realtime", "batch"])
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Realtime requests in flight.",
)
@click.option(
    "--prompt",
    type=click.Choice(PROMPT_STYLES),
    help="full lists the labels; short (for fine-tuned models) does not.  [default: full; "
    "an hf/ adapter: the style it was trained with]",
)
@click.option(
    "--answer",
    type=click.Choice([*ANSWER_MODES, "score"]),
    help="openai/, azure/: enum (structured output limited to the labels, the default) or text "
    "(free text, parsed). hf/: score (every label's likelihood, the default) or text (generated, "
    "parsed).",
)
@click.option(
    "--label-batch",
    default=128,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="hf/ label scoring: labels scored per pass from one image's cache.",
)
@click.option(
    "--max-new-tokens",
    default=20,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="hf/ with --answer text: the longest answer generated.",
)
@detail_option
@click.option(
    "--logprobs/--no-logprobs",
    default=True,
    show_default=True,
    help="Record the chosen label's probability.",
)
@click.option("--limit", type=click.IntRange(1), help="Only the first N items of the split.")
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Client-side cap on requests per minute.",
)
@click.option(
    "--tpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Client-side cap on tokens per minute.",
)
@timeout_option
@click.option(
    "--max-attempts",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Tries per item before it is recorded as an error.",
)
@click.option(
    "--retry-failed", is_flag=True, help="Ask again for items an earlier run recorded as errors."
)
@click.option(
    "--reset",
    is_flag=True,
    help="Discard this arm's recorded answers first (needed when DIR was prepared again, or to "
    "change its model or settings under the same --name).",
)
@click.option(
    "--until-decided",
    is_flag=True,
    help="Answer the split in a seeded random order and stop once the comparison with --against "
    "is decided (an anytime-valid confidence sequence excludes 0, or lies within --margin).",
)
@click.option("--against", help="With --until-decided: the arm compared with (already run).")
@click.option(
    "--margin",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="With --until-decided: also stop when the difference is surely within +-margin.",
)
@click.option(
    "--alpha",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="With --until-decided: the chance the interval ever misses the true difference.",
)
@click.option("--order-seed", default=0, show_default=True, type=int, help="With --until-decided.")
@poll_option("Batch")
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Local models: images per forward pass (hf/: images recorded together; with --answer "
    "text, images generated together).",
)
@click.option(
    "--templates",
    type=click.Path(path_type=Path, dir_okay=False),
    help="clip/ zero-shot: a JSON list of prompt templates (each with one {} for the label) "
    "replacing the shipped ones.",
)
@local_options
def classify_cmd(
    prepared_dir: Path,
    model: str,
    name: str,
    split: str,
    mode: str,
    concurrency: int,
    prompt: str | None,
    answer: str | None,
    label_batch: int,
    max_new_tokens: int,
    detail: str,
    logprobs: bool,
    limit: int | None,
    rpm: float | None,
    tpm: float | None,
    timeout_s: float,
    max_attempts: int,
    retry_failed: bool,
    reset: bool,
    until_decided: bool,
    against: str | None,
    margin: float,
    alpha: float,
    order_seed: int,
    poll_s: float,
    batch_size: int,
    templates: Path | None,
    device: str,
    workers: int,
    offline: bool,
    cpu_price_per_hour: float | None,
    gpu_price_per_hour: float | None,
) -> None:
    """Classify the SPLIT of the prepared dataset DIR with MODEL and record every answer.

    Chat models (openai/, azure/) get one request per image, realtime or through the Batch
    API; local models (clip/, cnn/, hf/) run here in batches and record each answer's full
    class distribution (hf/ with --answer text: the parsed generated answer).

    Answers are saved as they arrive (DIR/runs.sqlite): rerun the same command after an
    interruption and only the missing items are requested. Results: DIR/arms/NAME/predictions.csv
    and arm.json. Exit code 3: finished, but some items are recorded with an error.
    """
    refuse_options_that_do_not_apply(model)
    local = model.partition("/")[0] in LOCAL_PROVIDERS
    if answer == "score" and not local:
        raise UserError(
            f"--answer score scores labels with a model that runs here (hf/): {model} answers "
            "with text; use --answer enum or text"
        )
    if answer == "enum" and local:
        raise UserError(
            f"--answer enum is structured output of a chat API: {model} scores every label "
            "(--answer score, the default) or generates text (--answer text)"
        )
    if until_decided != (against is not None):
        raise UserError("--until-decided and --against go together: --until-decided --against ARM")
    options = ClassifyOptions.model_validate(
        {
            "until_decided": {
                "against": against,
                "margin": margin,
                "alpha": alpha,
                "seed": order_seed,
            }
            if until_decided
            else None,
            "model": model,
            "name": name,
            "split": split,
            "mode": mode,
            "prompt": prompt or "full",
            "answer": answer if answer in ANSWER_MODES else "enum",
            "detail": detail,
            "logprobs": logprobs,
            "limit": limit,
            "retry_failed": retry_failed,
            "reset": reset,
            "batch_poll_s": poll_s,
            "local": LocalSettings.model_validate(
                {
                    "device": device,
                    "batch_size": batch_size,
                    "templates": templates,
                    "prompt": prompt,
                    "answer": answer or "score",
                    "max_new_tokens": max_new_tokens,
                    "label_batch": label_batch,
                    "workers": workers,
                    "offline": offline,
                    "cpu_price_per_hour": cpu_price_per_hour,
                    "gpu_price_per_hour": gpu_price_per_hour,
                }
            ),
            "runner": RunnerConfig(
                concurrency=concurrency,
                rpm=rpm,
                tpm=tpm,
                request_timeout_s=timeout_s,
                max_attempts=max_attempts,
            ),
        }
    )
    # The bar appears with the first progress or message, so a refusal is one line alone.
    bar = progress_bar(TextColumn("{task.fields[rate]}"))
    tasks: list[TaskID] = []

    def task() -> TaskID:
        if not tasks:
            bar.start()
            kind = "local" if model.partition("/")[0] in LOCAL_PROVIDERS else mode
            tasks.append(bar.add_task(f"{name} ({kind})", total=None, rate="", errors=""))
        return tasks[0]

    def on_progress(p: RunProgress) -> None:
        t = task()
        elapsed = bar.tasks[t].elapsed or 0.0
        fresh = p.done - p.skipped
        rate = f"{fresh / elapsed:.1f}/s" if elapsed > 0 and fresh else ""
        errors = f"{p.errors} errors" if p.errors else ""
        retries = f" {p.retries} retries" if p.retries else ""
        bar.update(t, total=p.total, completed=p.done, rate=rate + retries, errors=errors)

    def on_status(message: str) -> None:
        task()
        bar.console.print(f"  {message}", highlight=False)

    try:
        result = classify(prepared_dir, options, on_progress=on_progress, on_status=on_status)
    finally:
        if tasks:  # a bar never started would still print an empty line when stopped
            bar.stop()
    t = result.totals
    emulated = (
        " [yellow](emulated: numbers from the built-in emulator, not a real model)[/]"
        if result.emulated
        else ""
    )
    answered = f"{t['answered']} answered" + (f" of {t['items']}" if t["errors"] else "")
    acc = "n/a" if t["accuracy"] is None else f"{t['accuracy']:.2%}"
    c = result.compute
    if c is not None:
        speed = f"{c['images_per_s']:,.1f} images/s" if c["images_per_s"] else "nothing new run"
        usage = f"{speed} on {c['device']}, peak memory {c['peak_rss_mb']:,.0f} MB"
    else:
        usage = f"{t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} completion tokens"
    line = (
        f"accuracy {acc} over {answered} items, {t['invalid']} invalid answers, {usage}{emulated}"
    )
    if t["errors"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.summary["error_kinds"].items()))
        err_console.print(
            f"[bold red]{name}: {t['errors']} of {t['items']} items failed[/]"
            + (f" ({escape(kinds)})" if kinds else "")
            + f": see the error column of {result.arm_dir / 'predictions.csv'}, then rerun with "
            "--retry-failed"
        )
        out_console.print(f"  {line}")
    else:
        out_console.print(f"{name}: {line}")
    if result.summary.get("skipped_already_done"):
        out_console.print(
            f"  {result.summary['skipped_already_done']} items were already done and not requested again"
        )
    seq = result.until_decided
    if seq:
        if seq["decision"]:
            lo, hi = seq["interval"]
            out_console.print(
                f"  decided after {seq['needed']} of {seq['items']} items: {seq['decision']} than "
                f"{seq['against']} ({100 * lo:+.1f} to {100 * hi:+.1f} pp, anytime-valid "
                f"{1 - seq['alpha']:.0%}); {seq['unasked']} items not asked"
            )
        else:
            out_console.print(
                f"  not decided: all {seq['items']} items answered (the difference is too close "
                "to 0 for this split)"
            )
    out_console.print(f"  {result.arm_dir / 'predictions.csv'}")
    out_console.print(f"  {result.arm_dir / 'arm.json'}")
    if t["errors"]:
        click.get_current_context().exit(EXIT_ITEM_ERRORS)
