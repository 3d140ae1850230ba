"""`python -m vlm_classify.emulator [options]`: the same as `vlm-classify emulator`."""

from __future__ import annotations

import sys

import click

from ..cli._console import err_console
from ..cli.emulator import emulator_cmd
from ..errors import VlmClassifyError


def main() -> None:
    try:
        emulator_cmd.main(
            args=sys.argv[1:], prog_name="python -m vlm_classify.emulator", standalone_mode=False
        )
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except VlmClassifyError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
