"""`vlm-classify finetune` and `vlm-classify deploy`: the fine-tuning API, followed live."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from ..backends.base import LocalSettings
from ..backends.openai.deploy import DeployOptions, deploy
from ..backends.openai.finetune import FinetuneEvent, FinetuneOptions, finetune
from ..errors import UserError
from ..training import Epoch, TrainOptions, train_local
from ._console import err_console, out_console
from ._options import detail_option, local_options, poll_option, prompt_option
from .classify import LOCAL_PROVIDERS


def _auto_int(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise click.BadParameter("give a positive whole number or 'auto'") from None
    if n < 1:
        raise click.BadParameter("give a positive whole number or 'auto'")
    return n


def _auto_float(_ctx: click.Context, _param: click.Parameter, value: str) -> float | str:
    if value == "auto":
        return value
    try:
        x = float(value)
    except ValueError:
        raise click.BadParameter("give a positive number or 'auto'") from None
    if x <= 0:
        raise click.BadParameter("give a positive number or 'auto'")
    return x


@click.command("finetune")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--model",
    required=True,
    help="Base model: openai/gpt-4o-2024-08-06 or azure/gpt-4o-2024-08-06 (the fine-tuning "
    "API); clip/<model> (a linear probe on its image embeddings), cnn/<timm architecture> or "
    "hf/<VLM> (a LoRA adapter), trained here.",
)
@click.option("--name", required=True, help="The arm recording this job, e.g. ft-job.")
@click.option(
    "--epochs",
    default=None,
    callback=_auto_int,
    help="Epochs, or 'auto' (fine-tuning API only). [default: 2 for the API, the provider's "
    "own for local models]",
)
@click.option(
    "--lr-multiplier",
    default="0.5",
    show_default=True,
    callback=_auto_float,
    help="Learning-rate multiplier, or 'auto'.",
)
@click.option(
    "--batch-size",
    default=None,
    callback=_auto_int,
    help="Batch size, or 'auto' (fine-tuning API only). [default: auto for the API, the "
    "provider's own for local models]",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="Local models: learning rate [default: the provider's own].",
)
@click.option(
    "--lora-rank",
    type=click.IntRange(1, 1024),
    help="hf/ models: the LoRA adapter's rank [default: 16].",
)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--suffix", help="Added to the fine-tuned model's name.")
@prompt_option("System prompt of the training examples (evaluate with the same).")
@detail_option
@click.option(
    "--detach", is_flag=True, help="Create the job and return; rerun (or --follow) to re-attach."
)
@click.option(
    "--follow", "follow_only", is_flag=True, help="Re-attach to this arm's job; never start one."
)
@poll_option("job")
@local_options
def finetune_cmd(
    prepared_dir: Path,
    model: str,
    name: str,
    epochs: int | str,
    lr_multiplier: float | str,
    batch_size: int | str,
    lora_rank: int | None,
    seed: int,
    suffix: str | None,
    prompt: str,
    detail: str,
    detach: bool,
    follow_only: bool,
    poll_s: float,
    lr: float | None,
    device: str,
    workers: int,
    offline: bool,
    cpu_price_per_hour: float | None,
    gpu_price_per_hour: float | None,
) -> None:
    """Fine-tune MODEL on the train split of DIR (validated on val) and follow the job live.

    Files are validated locally and uploaded once; the job id is saved, so rerunning the command
    re-attaches to the same job instead of starting another. The outcome (job id, fine-tuned
    model, trained tokens, metrics) lands in DIR/arms/NAME/finetune.json.

    Local models (clip/, cnn/, hf/) train here, select on val, keep the best model in
    DIR/arms/NAME/model and record it as clip/arm:NAME, cnn/arm:NAME or hf/arm:NAME (a LoRA
    adapter), which classify takes. hf/ runs under `accelerate launch` over several GPUs.
    """
    provider = model.partition("/")[0]
    if provider in LOCAL_PROVIDERS:
        for flag, given in (("--follow", follow_only), ("--detach", detach), ("--suffix", suffix)):
            if given:
                raise UserError(f"{flag} is for the fine-tuning API: a local model trains here")
        ctx = click.get_current_context()
        on_line = {
            p: ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE
            for p in ("prompt", "detail", "lora_rank", "workers")
        }
        takers = {"prompt": ("hf",), "lora_rank": ("hf",), "detail": (), "workers": ("clip", "cnn")}
        for param, who in takers.items():
            if on_line[param] and provider not in who:
                flag = "--" + param.replace("_", "-")
                what = ", ".join(f"{p}/" for p in who) + " models" if who else "the fine-tuning API"
                raise UserError(f"{flag} is for {what}: {model} does not use it; drop it")
        _train_local(
            prepared_dir,
            model,
            name,
            epochs,
            batch_size,
            lr,
            seed,
            lora_rank,
            LocalSettings.model_validate(
                {
                    "prompt": prompt if provider == "hf" else None,
                    "device": device,
                    "workers": workers,
                    "offline": offline,
                    "cpu_price_per_hour": cpu_price_per_hour,
                    "gpu_price_per_hour": gpu_price_per_hour,
                }
            ),
        )
        return
    if lr is not None:
        raise UserError("--lr is for local models: the fine-tuning API takes --lr-multiplier")
    if lora_rank is not None:
        raise UserError("--lora-rank is for hf/ models: the fine-tuning API chooses its own")
    options = FinetuneOptions.model_validate(
        {
            "model": model,
            "name": name,
            "epochs": 2 if epochs is None else epochs,
            "lr_multiplier": lr_multiplier,
            "batch_size": "auto" if batch_size is None else batch_size,
            "seed": seed,
            "suffix": suffix,
            "prompt": prompt,
            "detail": detail,
            "detach": detach,
            "follow_only": follow_only,
            "poll_s": poll_s,
        }
    )
    with err_console.status("starting", spinner="dots") as status:

        def on_event(ev: FinetuneEvent) -> None:
            if ev.kind == "status":
                status.update(escape(ev.message))
            style = {"event": "dim", "status": "bold"}.get(ev.kind, "")
            err_console.print(f"[{style}]{escape(ev.message)}[/]" if style else escape(ev.message))

        result = finetune(prepared_dir, options, on_event=on_event)
    record = result.record
    out_console.print(f"job {record['job_id']}: {record['status']}")
    if record.get("fine_tuned_model"):
        out_console.print(f"  fine-tuned model: {record['fine_tuned_model']}")
        out_console.print(f"  trained tokens:   {record.get('trained_tokens') or 0:,}")
        if record.get("emulated"):
            out_console.print(
                "  [yellow](emulated: trained by the built-in emulator, not a real service)[/]"
            )
        if record["base_model"].startswith("azure/"):
            out_console.print(
                f"  next: vlm-classify deploy {prepared_dir} --job {name} --deployment <name> (Azure serves it once deployed)"
            )
        else:
            out_console.print(
                f"  next: vlm-classify classify {prepared_dir} --model openai/{record['fine_tuned_model']} --name fine-tuned --prompt {prompt}"
            )
    out_console.print(f"  {result.path}")


def _train_local(
    prepared_dir: Path,
    model: str,
    name: str,
    epochs: int | str | None,
    batch_size: int | str | None,
    lr: float | None,
    seed: int,
    lora_rank: int | None,
    local: LocalSettings,
) -> None:
    """Train a local model, one line per epoch, then say how to evaluate it."""
    if epochs == "auto" or batch_size == "auto":
        raise UserError("'auto' is for the fine-tuning API: give local models a number, or omit it")
    options = TrainOptions(
        model=model,
        name=name,
        epochs=epochs,  # type: ignore[arg-type]
        batch_size=batch_size,  # type: ignore[arg-type]
        lr=lr,
        lora_rank=lora_rank,
        seed=seed,
        local=local,
    )
    main = os.environ.get("RANK", "0") == "0"  # under `accelerate launch`, process 0 speaks

    def on_epoch(e: Epoch) -> None:
        parts = [f"epoch {e.epoch}"]
        for label, value in (("train loss", e.train_loss), ("val loss", e.val_loss)):
            if value is not None:
                parts.append(f"{label} {value:.4f}")
        if e.val_accuracy is not None:
            parts.append(f"val accuracy {e.val_accuracy:.2%}")
        if e.seconds is not None:
            parts.append(f"{e.seconds:.1f} s")
        err_console.print(", ".join(parts))

    status = err_console.status(f"training {model}", spinner="dots")
    with status if main else contextlib.nullcontext():
        record = train_local(prepared_dir, options, on_epoch=on_epoch)
    if not record:
        return
    acc = record.get("best_val_accuracy")
    out_console.print(
        f"{name}: trained {record['base_model']} on {record['trained_images']} images in "
        f"{record['wall_s']:.1f} s on {record['hardware']['device']}; best epoch "
        f"{record['best_epoch']}" + (f", val accuracy {acc:.2%}" if acc is not None else "")
    )
    details = record.get("details") or {}
    if details.get("pretrained") is False and details.get("pretrained_note"):
        out_console.print(f"  [yellow]from scratch:[/] {escape(str(details['pretrained_note']))}")
    out_console.print(f"  fine-tuned model: {record['fine_tuned_model']}")
    out_console.print(f"  next: {record['evaluate_with']}")


@click.command("deploy")
@click.argument("prepared_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--job", required=True, help="The finetune arm (its finetune.json names the model).")
@click.option("--deployment", required=True, help="Name of the Azure deployment to create.")
@click.option("--subscription", help="Azure subscription id.")
@click.option("--resource-group", help="Resource group of the Azure OpenAI resource.")
@click.option("--account", help="Name of the Azure OpenAI resource.")
@click.option(
    "--sku",
    help="Deployment type: standard, globalstandard or developertier (no hourly fee, 24 hours, "
    "gpt-4.1 and o4-mini only). [default: globalstandard for gpt-4.1, standard for gpt-4o]",
)
@click.option("--capacity", default=1, show_default=True, type=click.IntRange(1))
def deploy_cmd(
    prepared_dir: Path,
    job: str,
    deployment: str,
    subscription: str | None,
    resource_group: str | None,
    account: str | None,
    sku: str | None,
    capacity: int,
) -> None:
    """Deploy a fine-tuned model on Azure OpenAI (control-plane PUT), or print the exact command.

    Sending needs --subscription, --resource-group, --account and AZURE_MANAGEMENT_TOKEN
    (az account get-access-token --query accessToken -o tsv).
    """
    options = DeployOptions(
        job=job,
        deployment=deployment,
        subscription=subscription,
        resource_group=resource_group,
        account=account,
        sku=sku,
        capacity=capacity,
    )
    result = deploy(prepared_dir, options)
    if not result.sent:
        out_console.print(
            "Not all of --subscription, --resource-group and --account given: run this (Azure CLI) "
            "to deploy, then evaluate it:"
        )
        out_console.print(f"  {escape(result.command)}")
        out_console.print("or send this request with a management token:")
        out_console.print(f"  PUT {escape(result.url)}")
        out_console.print(f"  {json.dumps(result.body)}")
    else:
        state = (result.response or {}).get("properties", {}).get("provisioningState", "sent")
        out_console.print(f"deployment {deployment} ({result.sku}): {state}")
    out_console.print(
        f"  then: vlm-classify classify {prepared_dir} --model azure/{deployment} --name fine-tuned"
    )
