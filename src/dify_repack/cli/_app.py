"""The click group, the options commands share, and ``main(argv) -> int``: the one error boundary."""

from __future__ import annotations

import errno
import functools
import importlib
import json
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import __version__, cancel
from ..credentials import use_tls_options
from ..daemon import DEFAULT_UV_VERSIONS
from ..errors import DifyRepackError, EnvironmentProblem, ExitCode, Interrupted, UsageError
from ..redaction import RedactingFilter, redact
from ..resolve import DEFAULT_INDEX
from ..runner import commands
from ..targets import ARCH_CHOICES, DEFAULT_PYTHON, PYTHONS, canonical_arch, parse_python
from ._signals import stop_on_signals

if TYPE_CHECKING:
    from rich.console import Console

    from ..report import ConsoleReporter

F = TypeVar("F", bound=Callable[..., Any])

PROG = "dify-repack"
SCHEMA = 1  # of every --json document; raised only for changes that break a reader


@functools.cache
def stderr() -> Console:
    """The console for progress and errors; made on first use, so that ``--version`` does not import rich."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


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


@dataclass
class Output:
    """How the run prints, from ``-v``/``-q``/``--json`` given before or after the subcommand (either counts)."""

    verbose: bool = False
    quiet: bool = False
    as_json: bool = False


def output() -> Output:
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Output):
        root.obj = Output()
    return root.obj


def _remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    state = output()
    assert param.name is not None
    merged = bool(value) or getattr(state, param.name)
    setattr(state, param.name, merged)
    if param.name == "verbose":
        setup_logging(merged)
    return merged


class _LogFormat(logging.Formatter):
    """Commands as ``$ argv`` with their output indented below; our other messages prefixed by their module."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == commands.name:
            return f"$ {message}" if record.levelno >= logging.INFO else f"  {message}"
        return f"{record.name}: {message}"


def setup_logging(verbose: bool) -> None:
    """``-v``: the commands run (uv, pip, python) and their output, and our own debug lines on stderr.

    The HTTP libraries' debug (every header of every request) drowns that, so they stay at warnings. The level is
    set apart from the handler, which is added once: a -v after the subcommand still counts.
    """
    root = logging.getLogger()
    if not root.handlers:
        ours = logging.StreamHandler(sys.stderr)
        ours.setFormatter(_LogFormat())
        root.addHandler(ours)
    for handler in root.handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())  # a log line that quotes a URL with a login in it
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Every command and the group take these three, so they work on either side of the subcommand. Eager: they are
# known before any other option's callback runs (--version's among them).
output_options = [
    click.option(
        "-v",
        "--verbose",
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=_remember,
        help="Show commands run and tracebacks of unexpected errors.",
    ),
    click.option(
        "-q",
        "--quiet",
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=_remember,
        help="Print only the result and errors.",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,
        expose_value=False,
        callback=_remember,
        help="Print one JSON document (schema 1) on stdout, whatever the outcome; nothing else goes to stdout.",
    ),
]


def with_options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: plain, the bare number with -q, or the envelope with --json (given on either side of it)."""
    if not value or ctx.resilient_parsing:
        return
    state = output()
    if state.as_json:
        python = ".".join(str(part) for part in sys.version_info[:3])
        print_document(envelope("version", "success", {"version": __version__, "python": python}))
    else:
        click.echo(__version__ if state.quiet else f"{PROG}, version {__version__}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
# Not eager, unlike click's version option: it runs after -q and --json, whichever order they came in.
@click.option("--version", is_flag=True, expose_value=False, callback=_show_version, help="Show the version and exit.")
@with_options(output_options)
def cli() -> None:
    """Repackage Dify plugins so they install on a Dify deployment with no internet access.

    \b
    Common flows, on a machine with internet access:
      dify-repack pack ./author-plugin_1.0.0.difypkg         # writes ./author-plugin_1.0.0-offline.difypkg
      dify-repack pack langgenius/openai_api_compatible      # the latest Marketplace version
      dify-repack pack -r plugins.txt -o offline/            # a batch, one source a line
      dify-repack keygen keys/offline && dify-repack pack ./p.difypkg --sign-key keys/offline.private.pem
      dify-repack pack app1.yml app2.yml -o out/ --bundle out/plugins.difybndl   # whole apps (DSL files)
      dify-repack pack -r plugins.txt -o slim/ --mirror-url http://pypi.internal/simple   # + a wheelhouse
      dify-repack inspect ./author-plugin_1.0.0-offline.difypkg --sbom p.cdx.json --report p.html
    Then carry the -offline.difypkg (or the bundle) across the air gap and upload it in Dify's plugin
    page (docs/operators.md: the settings, the upload, troubleshooting).

    \b
    -v, -q and --json work before or after the command. Exit codes: 0 ok, 2 usage, 3 bad package,
    4 dependencies, 5 build, 6 network, 7 verification, 8 signature, 9 host, 10 partial batch,
    130/143 interrupted (Ctrl-C/SIGTERM).
    """


def emit(status: str, fields: dict[str, object], error: DifyRepackError | dict[str, object] | None = None) -> None:
    """Print the one JSON document of the running command (PLAN contract 4)."""
    command = " ".join(click.get_current_context().command_path.split()[1:])
    if isinstance(error, DifyRepackError):
        error = error_json(error.message, error.tip, int(error.exit_code))
    print_document(envelope(command, status, fields, error))


def print_document(document: dict[str, object]) -> None:
    """The one JSON document on stdout. Results and errors quote sources, index and download URLs: the whole
    document is redacted, whatever field holds one."""
    click.echo(redact(json.dumps(document, indent=2, default=str)))


def envelope(
    command: str | None, status: str, fields: dict[str, object], error: dict[str, object] | None = None
) -> dict[str, object]:
    """``{"schema": 1, "command", "status", ...fields}``, and ``"error"`` when the command failed."""
    payload: dict[str, object] = {"schema": SCHEMA, "command": command, "status": status}
    # A core result's own "schema"/"status" keys give way to the envelope's.
    payload.update((key, value) for key, value in fields.items() if key not in payload)
    if error is not None:
        payload["error"] = error
    return payload


def error_json(message: str, tip: str | None, exit_code: int) -> dict[str, object]:
    return {"message": one_line(message), "tip": tip, "exit_code": exit_code}


def make_reporter() -> ConsoleReporter:
    """Progress on stderr; only warnings with -q or --json."""
    from ..report import ConsoleReporter

    out = output()
    return ConsoleReporter(stderr(), quiet=out.quiet or out.as_json)


def _where(ctx: click.Context, param: click.Parameter) -> str:
    """How the user gave a value: the flag, or the environment variable click read it from."""
    flag = param.opts[0]
    if ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.ENVIRONMENT:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        variable = next((name for name in names if os.environ.get(name)), None)
        if variable:
            return f"{variable} (read as {flag})"
    return flag


def check_urls(ctx: click.Context, param: click.Parameter, value: str | tuple[str, ...] | None) -> object:
    """An index or Marketplace URL must say its scheme: found out now, not after a failed resolution."""
    for url in (value,) if isinstance(value, str) else value or ():
        if not url.lower().startswith(("http://", "https://")):
            where = _where(ctx, param)
            if "://" in url:
                raise UsageError(f"{where} {url!r}: only http:// and https:// URLs are supported")
            # A password typed without the scheme is masked too: redact() recognises URLs by their scheme.
            shown = redact(f"https://{url}").removeprefix("https://")
            raise UsageError(f"{where} {shown!r} has no scheme", tip=f"write the whole URL: https://{shown}")
        import httpx  # here, not at the top: `--version` imports no networking

        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL as exc:
            raise UsageError(f"{_where(ctx, param)} {redact(url)!r}: not a valid URL ({exc})") from None
        if not host:
            raise UsageError(f"{_where(ctx, param)} {redact(url)!r} names no host")
    return value


def check_uv_versions(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """A uv version is a version number or ``latest``: anything else would reach the index as a requirement."""
    from packaging.version import InvalidVersion, Version

    for version in value:
        if version != "latest":
            try:
                Version(version)
            except InvalidVersion:
                raise UsageError(
                    f"--uv {version!r}: not a version number", tip="give e.g. --uv 0.9.13, or latest"
                ) from None
    return value


# Both stand for the variables uv reads too (see http.py), so they take effect by setting them.
cert_option = click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    expose_value=False,
    callback=lambda _ctx, _param, value: use_tls_options(value, False),
    metavar="FILE",
    help="CA bundle (PEM) to trust for the index and downloads, instead of the default roots. "
    "Env: SSL_CERT_FILE, REQUESTS_CA_BUNDLE.",
)
native_tls_option = click.option(
    "--native-tls",
    "--system-certs",
    is_flag=True,
    expose_value=False,
    callback=lambda _ctx, _param, value: use_tls_options(None, value),
    help="Trust the system's certificate store (a corporate CA installed there), as uv's flag of that name. "
    "Env: UV_SYSTEM_CERTS.",
)
tls_options = [cert_option, native_tls_option]
index_options = [
    click.option(
        "--index-url",
        envvar=["UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"],
        default=DEFAULT_INDEX,
        show_default=True,
        metavar="URL",
        callback=check_urls,
        help="Package index to resolve and download from (a private mirror works). "
        "Env: UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL.",
    ),
    click.option(
        "--extra-index-url",
        "extra_index_urls",
        multiple=True,
        envvar=["UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"],
        metavar="URL",
        callback=check_urls,
        help="Another index to use as well (repeatable). Env: UV_EXTRA_INDEX_URL, PIP_EXTRA_INDEX_URL.",
    ),
    *tls_options,
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
    callback=check_uv_versions,
    help=f"uv version to replay the daemon with (repeatable; 'latest' allowed). "
    f"Default: {' and '.join(DEFAULT_UV_VERSIONS)}, the oldest and newest in the daemon's images.",
)


arch_option = click.option(
    "--arch",
    type=click.Choice(ARCH_CHOICES, case_sensitive=False),
    callback=lambda _ctx, _param, value: None if value is None else canonical_arch(value),
    help="CPU architectures: amd64 (or x86_64), arm64 (or aarch64) or all (default: the manifest's meta.arch).",
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
    metavar="3.N",
    callback=lambda _ctx, _param, value: parse_python(value),
    help=f"CPython version of the daemon's venv ({PYTHONS[0]} to {PYTHONS[-1]}; "
    "the daemon always makes a 3.12 venv, whatever the manifest says).",
)


review_options = [
    click.option(
        "--sbom",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Write a CycloneDX 1.6 SBOM (JSON) of every package: wheels with hashes, licenses, origin.",
    ),
    click.option(
        "--report",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Write a self-contained HTML review report (identifier, signature, verification, wheels, licenses).",
    ),
]


def one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def print_error(message: str, tip: str | None = None) -> None:
    """The one way an error is shown on stderr: an ``error:`` line, and a ``tip:`` line when there is one.

    Redacted here: click's messages, unexpected errors and a batch's failures quote input (URLs) too.
    """
    from rich.markup import escape

    stderr().print(f"[bold red]error:[/] {escape(one_line(redact(message)))}")
    if tip:
        stderr().print(f"[bold]tip:[/] {escape(redact(tip))}")


def _command_of(args: Sequence[str]) -> str | None:
    """The (sub)command named in ``args``, for the envelope of errors raised before or outside it."""
    words = [arg for arg in args if not arg.startswith("-")]
    group: click.Group = cli
    names: list[str] = []
    for word in words:
        command = group.commands.get(word)
        if command is None:
            break
        names.append(word)
        if not isinstance(command, click.Group):
            break
        group = command
    return " ".join(names) or None


def _fail(args: Sequence[str], message: str, tip: str | None, exit_code: int) -> int:
    """Render an error: one ``error:`` line (+ ``tip:``) on stderr, and with --json the one document on stdout."""
    print_error(message, tip)
    options = args[: args.index("--")] if "--" in args else args
    if "--json" in options:
        print_document(envelope(_command_of(args), "error", {}, error_json(message, tip, exit_code)))
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    cancel.reset()
    with stop_on_signals():
        return _run(args)


def _run(args: list[str]) -> int:
    try:
        code = cli.main(args=args, prog_name=PROG, standalone_mode=False)
    except DifyRepackError as error:
        return _fail(args, error.message, error.tip, int(error.exit_code))
    except click.exceptions.Abort:
        return _fail(args, "interrupted", None, int(Interrupted().exit_code))
    except click.exceptions.NoArgsIsHelpError as error:
        click.echo(error.ctx.get_help() if error.ctx else "")
        return int(ExitCode.USAGE)
    except click.ClickException as error:
        # Every click error is a usage error (its FileError would say 1, which here means a bug).
        context = getattr(error, "ctx", None)
        path = context.command_path if context is not None else PROG
        return _fail(args, error.format_message(), f"see `{path} --help`", int(ExitCode.USAGE))
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return _unexpected(args, error)
        folder = Path(os.fsdecode(error.filename)).parent if error.filename else None
        problem = EnvironmentProblem.cannot_write(folder, error)
        return _fail(args, problem.message, problem.tip, int(problem.exit_code))
    except Exception as error:
        return _unexpected(args, error)
    return code if isinstance(code, int) else int(ExitCode.OK)


def _unexpected(args: list[str], error: Exception) -> int:
    if "-v" in args or "--verbose" in args:
        traceback.print_exc()
    message = f"unexpected {type(error).__name__}: {error}"
    return _fail(args, message, "run with -v for the traceback, and report it", int(ExitCode.FAILURE))
