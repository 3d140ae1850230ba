"""`vlm-classify run EXPERIMENT.toml`: the whole experiment, resumable end to end."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import click
from rich.markup import escape
from rich.progress import Progress, TaskID

from ..errors import EXIT_ITEM_ERRORS, UserError
from ..experiment import load_experiment
from ..run import Runner, resolve_out
from ._console import err_console, out_console, progress_bar

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def load_env_file(path: Path) -> list[str]:
    """`KEY=VALUE` lines (optionally `export`ed, quoted, with `#` comments) into the environment;
    a variable already set keeps its value. Returns the names set (never their values)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--env-file {path}: cannot read it ({e.strerror or e})") from None
    names: list[str] = []
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _ENV_LINE.match(raw)
        if not m:
            raise UserError(f"--env-file {path}:{no}: not a KEY=VALUE line")
        name, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        if name not in os.environ:
            os.environ[name] = value
            names.append(name)
    return names


class ConsoleUI:
    """Step lines and status on stderr (progress bars unless quiet); a plain copy in a log file."""

    def __init__(self, quiet: bool, log: TextIO | None) -> None:
        self.quiet = quiet
        self.log = log
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def _write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.log.flush()

    def step(self, step: str, action: str, why: str) -> None:
        self.stop_bar()
        mark = {"run": "[bold]>[/]", "skip": "[green]=[/]", "plan": "[cyan]?[/]"}[action]
        verb = {"run": "run", "skip": "skip", "plan": "would run"}[action]
        err_console.print(f"{mark} {verb} {escape(step)} [dim]({escape(why)})[/]")
        self._write(f"{verb} {step} ({why})")

    def status(self, message: str) -> None:
        if not self.quiet:
            (self.bar.console if self.bar else err_console).print(
                f"  {escape(message)}", highlight=False
            )
        self._write(f"  {message}")

    def progress(self, step: str, done: int, total: int | None) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = progress_bar()
            self.bar.start()
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(step, total=total, errors="")
        self.bar.update(self.tasks[step], completed=done, total=total)

    def stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.tasks.clear()


@click.command("run")
@click.argument("experiment", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="The run's folder [default: the file's `out`, else runs/<file name>].",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan and the cost estimate; spend nothing."
)
@click.option(
    "--only", help="Run one step (e.g. classify:base) or one kind of step (prepare, classify...)."
)
@click.option("--quiet", "-q", is_flag=True, help="Step lines only: no progress, no details.")
@click.option(
    "--log",
    "log_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append every line, time-stamped, to this file (for unattended runs).",
)
@click.option(
    "--env-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read API keys and endpoints from this .env file (variables already set win).",
)
def run_cmd(
    experiment: Path,
    out: Path | None,
    dry_run: bool,
    only: str | None,
    quiet: bool,
    log_file: Path | None,
    env_file: Path | None,
) -> None:
    """Run the experiment in EXPERIMENT (TOML): prepare, fine-tunes, deployments, classify,
    latency and the report, in that order.

    Each finished step is recorded with its inputs and skipped next time; a changed setting
    reruns what depends on it, and says why. Interrupted anywhere, the same command finishes the
    job without paying twice. Exit codes: 0 done, 1 an error (one line names the fix), 3 done
    but some items failed (the next run asks for them again), 130 interrupted.
    """
    if env_file is not None:
        load_env_file(env_file)
    exp, _ = load_experiment(experiment)
    base = experiment.resolve().parent
    out = resolve_out(exp, experiment, out)
    log = log_file.open("a", encoding="utf-8") if log_file else None
    ui = ConsoleUI(quiet, log)
    runner = Runner(exp, base, out, ui, dry_run, only)
    ui._write(f"vlm-classify run {experiment} -> {out}" + (" (dry run)" if dry_run else ""))
    try:
        result = runner.run()
    except KeyboardInterrupt:
        ui.stop_bar()
        where = f" during {runner.current}" if runner.current else ""
        err_console.print(
            f"[yellow]interrupted{where}[/]: every finished step and every answer so far is "
            f"saved in {out}; rerun the same command to resume"
        )
        ui._write(f"interrupted{where}")
        sys.exit(130)
    except UserError as e:
        ui.stop_bar()
        ui._write(f"error: {e}")
        raise
    finally:
        ui.stop_bar()
        if log is not None:
            log.close()
    if dry_run:
        usd = sum(e["usd"] for e in result.estimate)
        if result.estimate:
            out_console.print(
                f"estimated cost of the cloud arms: about ${usd:,.2f} (nothing spent)"
            )
        out_console.print(f"dry run: {len(result.planned)} step(s) would run, nothing was spent")
        return
    out_console.print(
        f"done: {len(result.ran)} step(s) run, {len(result.skipped)} already done"
        + (" [yellow](cloud numbers EMULATED)[/]" if result.emulated else "")
    )
    if result.report is not None:
        out_console.print(f"report: {result.report}")
    if result.errors:
        failed = ", ".join(f"{s} ({n})" for s, n in result.errors.items())
        err_console.print(f"[bold red]items failed[/] in {failed}: rerun to ask for them again")
        click.get_current_context().exit(EXIT_ITEM_ERRORS)
