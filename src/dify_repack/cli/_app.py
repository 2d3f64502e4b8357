"""The click group, the options commands share, and ``main(argv) -> int``: the one error boundary."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..daemon import DEFAULT_UV_VERSIONS
from ..errors import DifyRepackError, ExitCode
from ..resolve import DEFAULT_INDEX
from ..targets import ARCH_CHOICES, DEFAULT_PYTHON

if TYPE_CHECKING:
    from ..report import ConsoleReporter

F = TypeVar("F", bound=Callable[..., Any])

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class LazyGroup(click.Group):
    """Imports the command modules (every ``cli/*.py`` not starting with ``_``) only when a command is needed.

    ``--version`` and usage errors of the group then cost no httpx, cryptography or tomlkit import.
    """

    def _load(self) -> None:
        for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__package__}.{module.name}")

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


def echo_json(payload: dict[str, object]) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def make_reporter(quiet: bool) -> ConsoleReporter:
    from ..report import ConsoleReporter

    return ConsoleReporter(stderr, quiet=quiet)


index_options = [
    click.option(
        "--index-url",
        envvar=["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"],
        default=DEFAULT_INDEX,
        show_default=True,
        metavar="URL",
        help="Package index to resolve and download from (a private mirror works). "
        "Env: UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL.",
    ),
    click.option(
        "--extra-index-url",
        "extra_index_urls",
        multiple=True,
        envvar=["UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"],
        metavar="URL",
        help="Another index to use as well (repeatable). Env: UV_EXTRA_INDEX_URL, PIP_EXTRA_INDEX_URL.",
    ),
]
cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DIFY_REPACK_CACHE_DIR",
    help="Wheel cache shared by all runs (default: the platform's user cache dir). Env: DIFY_REPACK_CACHE_DIR.",
)
uv_option = click.option(
    "--uv",
    "uv_versions",
    multiple=True,
    metavar="VERSION",
    help=f"uv version to replay the daemon with (repeatable; 'latest' allowed). "
    f"Default: {' and '.join(DEFAULT_UV_VERSIONS)}, the oldest and newest in the daemon's images.",
)


arch_option = click.option(
    "--arch",
    type=click.Choice(ARCH_CHOICES),
    help="CPU architectures: amd64, arm64 or all (default: the manifest's meta.arch).",
)
glibc_option = click.option(
    "--glibc",
    default="2.28",
    show_default=True,
    metavar="2.N",
    help="Newest glibc of the Dify daemon's host: wheels for up to manylinux_2_N are accepted.",
)
python_option = click.option(
    "--python",
    "python_version",
    default=DEFAULT_PYTHON,
    show_default=True,
    help="CPython version of the daemon's venv (always 3.12 today, whatever the manifest says).",
)


def with_options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=args, prog_name="dify-repack", standalone_mode=False)
    except DifyRepackError as error:
        stderr.print(f"[bold red]error:[/] {escape(one_line(error.message))}")
        if error.tip:
            stderr.print(f"[bold]tip:[/] {escape(error.tip)}")
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
        stderr.print(
            f"[bold red]error:[/] unexpected {type(error).__name__}: {escape(str(error))} (run with -v for the traceback)"
        )
        return int(ExitCode.FAILURE)
    return code if isinstance(code, int) else int(ExitCode.OK)
