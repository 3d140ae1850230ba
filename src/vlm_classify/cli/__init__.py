"""The `vlm-classify` command: a thin layer over the library. One module per command family."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click
from rich.markup import escape

from .. import __version__
from ..errors import VlmClassifyError
from ._console import err_console


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="vlm-classify")
def cli(debug: bool) -> None:
    """Zero-shot or fine-tune? Measure a vision-language image classifier's accuracy, latency and cost.

    \b
    Typical flow:
      vlm-classify prepare stanford-dogs --out runs/dogs
      vlm-classify estimate runs/dogs --model openai/gpt-4o-2024-08-06
      vlm-classify classify runs/dogs --model openai/gpt-4o-2024-08-06 --name zero-shot
      vlm-classify finetune runs/dogs --model openai/gpt-4o-2024-08-06 --name ft-job
      vlm-classify classify runs/dogs --model openai/ft:... --name fine-tuned
      vlm-classify report runs/dogs
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not debug:  # the libraries' own retries and warnings are noise: our errors say it in a line
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_records)
        # huggingface_hub and transformers set up their own handlers when first imported
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecations in libraries


def _own_records(record: logging.LogRecord) -> bool:
    return record.name.startswith("vlm_classify")


def _register() -> None:
    from .classify import classify_cmd
    from .curve import curve_cmd
    from .emulator import emulator_cmd
    from .estimate import estimate_cmd
    from .export import export_cmd
    from .finetune import deploy_cmd, finetune_cmd
    from .latency import latency_cmd
    from .prepare import prepare_cmd
    from .report import report_cmd
    from .run import run_cmd
    from .sample import sample_cmd
    from .sensitivity import sensitivity_cmd

    for cmd in (
        sample_cmd,
        prepare_cmd,
        export_cmd,
        estimate_cmd,
        classify_cmd,
        finetune_cmd,
        curve_cmd,
        deploy_cmd,
        latency_cmd,
        report_cmd,
        emulator_cmd,
        run_cmd,
        sensitivity_cmd,
    ):
        cli.add_command(cmd)


_register()


def _one_line(e: VlmClassifyError) -> str:
    """The error's own line; one raised in a DataLoader worker process comes back with the
    worker's traceback in its message, and its last line is the original message."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return text


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one clear line (tracebacks with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("VLM_CLASSIFY_DEBUG"))
    try:
        code = cli.main(args=args, prog_name="vlm-classify", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)  # a command that finished but must not look like success (`ctx.exit`)
    except click.exceptions.Abort:
        err_console.print("[yellow]interrupted[/]: rerun the same command to resume")
        sys.exit(130)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "vlm-classify"
        err_console.print(
            f"[bold red]error:[/] {escape(e.format_message())} (see `{where} --help`)"
        )
        sys.exit(e.exit_code)
    except click.ClickException as e:
        err_console.print(f"[bold red]error:[/] {escape(e.format_message())}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: rerun the same command to resume")
        sys.exit(130)
    except VlmClassifyError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(_one_line(e))}")
        sys.exit(1)
    except Exception as e:
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))} "
            "(rerun with --debug for the traceback, and please report it)"
        )
        sys.exit(70)
