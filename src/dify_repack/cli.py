"""The command line: a thin layer over the core API. ``main(argv) -> int`` is the one error boundary."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

import click
from rich.console import Console

from . import __version__
from .errors import DifyRepackError, ExitCode

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dify-repack")
@click.option("-v", "--verbose", is_flag=True, help="Show commands run and tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Repackage Dify plugins so they install on a Dify deployment with no internet access.

    \b
    Typical use, on a machine with internet access:
      dify-repack pack ./author-plugin_1.0.0.difypkg   # writes ./author-plugin_1.0.0-offline.difypkg
      dify-repack inspect ./author-plugin_1.0.0-offline.difypkg
    Then carry the -offline.difypkg across the air gap and upload it in Dify's plugin page.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="dify-repack", standalone_mode=False)
    except DifyRepackError as error:
        stderr.print(f"[bold red]error:[/] {error.message}")
        if error.tip:
            stderr.print(f"[bold]tip:[/] {error.tip}")
        return int(error.exit_code)
    except click.exceptions.Abort:
        stderr.print("[bold red]error:[/] interrupted")
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except Exception as error:
        if "-v" in args or "--verbose" in args:
            traceback.print_exc()
        stderr.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {error} (run with -v for the traceback)")
        return int(ExitCode.FAILURE)
    return int(ExitCode.OK)
