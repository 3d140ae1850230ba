"""`vlm-classify emulator`: run the OpenAI / Azure OpenAI emulator in the foreground."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..emulator import Emulator, EmulatorConfig, parse_faults
from ..emulator.config import DEFAULT_API_KEY, parse_pairs
from ..files import write_text_atomic
from ._console import err_console, out_console


def _accuracy_pairs(items: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in parse_pairs(items, "--model-accuracy").items():
        try:
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(
                f"{name}={value}: the accuracy must be a number in 0..1",
                param_hint="--model-accuracy",
            ) from None
        if not 0 <= out[name] <= 1:
            raise click.BadParameter(
                f"{name}={value}: the accuracy must be in 0..1", param_hint="--model-accuracy"
            )
    return out


Fraction = click.FloatRange(0, 1)


@click.command("emulator")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0: any free port).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--manifest",
    "manifests",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Prepared folder (or its manifest.csv) whose labels are the ground truth; repeatable.",
)
@click.option(
    "--accuracy",
    default=0.74,
    show_default=True,
    type=Fraction,
    help="Chance that a base model gets an image right (drawn once per image).",
)
@click.option(
    "--ft-accuracy",
    default=0.83,
    show_default=True,
    type=Fraction,
    help="Chance that a fine-tuned model gets an image right.",
)
@click.option(
    "--model-accuracy",
    multiple=True,
    metavar="MODEL=ACC",
    help="Accuracy of one model or deployment; repeatable.",
)
@click.option(
    "--invalid-rate",
    default=0.02,
    show_default=True,
    type=Fraction,
    help="Share of free-text answers that come back messy.",
)
@click.option(
    "--latency-profile",
    type=click.Path(path_type=Path),
    help="CSV with a latency_ms column (and model: base/fine_tuned) to replay; `seed-study` replays the original study's 1,200 measured requests.",
)
@click.option(
    "--latency-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Multiply replayed latencies.",
)
@click.option(
    "--faults",
    default="",
    help="Injected faults, e.g. 429=0.1,500=0.05,503=0.02,timeout=0.02,drop=0.01,ft_fail=0.5.",
)
@click.option(
    "--retry-after-ms",
    default=200,
    show_default=True,
    type=click.IntRange(0),
    help="What a 429 asks clients to wait.",
)
@click.option(
    "--timeout-hold",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds a timeout fault holds a request.",
)
@click.option(
    "--api-key",
    default=DEFAULT_API_KEY,
    show_default=True,
    help="The key clients must send (a made-up one by default).",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of every deterministic choice."
)
@click.option(
    "--batch-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Time a batch takes to complete.",
)
@click.option(
    "--batch-fail-rate",
    default=0.0,
    show_default=True,
    type=Fraction,
    help="Share of batch lines that fail into the error file.",
)
@click.option(
    "--ft-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Time a fine-tuning job takes.",
)
@click.option(
    "--bill-factor",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Bill chat prompt tokens this many times what the token rules count (1.2: 20% more), "
    "to see classify's warning for a bill above the estimate.",
)
@click.option(
    "--deployment",
    "deployments",
    multiple=True,
    metavar="NAME=MODEL",
    help="Azure deployment of a model (MODEL 'ft' marks a fine-tuned one); repeatable.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Once listening, write the `export VAR=...` lines there too (for scripts: `. FILE`).",
)
def emulator_cmd(
    port: int,
    host: str,
    manifests: tuple[Path, ...],
    accuracy: float,
    ft_accuracy: float,
    model_accuracy: tuple[str, ...],
    invalid_rate: float,
    latency_profile: Path | None,
    latency_scale: float,
    faults: str,
    retry_after_ms: int,
    timeout_hold: float,
    api_key: str,
    seed: int,
    batch_seconds: float,
    batch_fail_rate: float,
    ft_seconds: float,
    bill_factor: float,
    deployments: tuple[str, ...],
    env_file: Path | None,
) -> None:
    """Run a local stand-in for the OpenAI and Azure OpenAI APIs (no keys, no network).

    Images sent to chat completions are answered from the manifest's labels at the given
    accuracy; files, batches, fine-tuning jobs and models behave like the service's on a
    compressed clock. Point the tool (or any OpenAI SDK client) at the URLs it prints.
    """
    config = EmulatorConfig(
        host=host,
        port=port,
        api_key=api_key,
        manifests=list(manifests),
        accuracy=accuracy,
        ft_accuracy=ft_accuracy,
        model_accuracy=_accuracy_pairs(model_accuracy),
        invalid_rate=invalid_rate,
        latency_profile=latency_profile,
        latency_scale=latency_scale,
        faults=parse_faults(faults),
        retry_after_ms=retry_after_ms,
        timeout_hold=timeout_hold,
        seed=seed,
        batch_seconds=batch_seconds,
        batch_fail_rate=batch_fail_rate,
        ft_seconds=ft_seconds,
        bill_factor=bill_factor,
        deployments=parse_pairs(deployments, "--deployment"),
    )
    emu = Emulator(config)
    try:
        emu.port  # bind now, so a busy port fails before anything is printed  # noqa: B018
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port"
        ) from None
    truth = emu.service.truth
    err_console.print(
        f"[bold]vlm-classify emulator[/] on {emu.origin}: {len(truth.by_sha)} known images, {len(truth.labels)} labels, "
        f"accuracy {accuracy:.2f} base / {ft_accuracy:.2f} fine-tuned (Ctrl-C to stop)"
    )
    err_console.print(
        f"  OpenAI style: {emu.base_url}   Azure style: {emu.azure_endpoint}/openai   Azure v1: {emu.azure_v1_base_url}"
    )
    err_console.print("  export these to point clients at it:")
    lines = [f"export {name}={shlex.quote(value)}" for name, value in emu.env().items()]
    for line in lines:
        out_console.print(line, soft_wrap=True, markup=False)
    if env_file is not None:
        # appears whole, once the port is bound
        write_text_atomic(env_file, "\n".join(lines) + "\n")
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        err_console.print(f"stopped after {emu.stats.requests} requests")
