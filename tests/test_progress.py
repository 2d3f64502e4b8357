"""What a person sees while pack works: a live view on a terminal, plain lines in a log, nothing with -q.

The terminal case runs the real CLI on a pseudo-terminal; its phases must appear in order and its counts
must be true (a fresh cache has nothing "already in the cache").
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin, manifest_yaml
from dify_repack.cli import main
from dify_repack.uvbin import own_uv_version

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PYPROJECT = """\
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["dify_plugin==0.7.4", "fastmath", "puresdist"]
"""


def _argv(plugin: Path, index: LocalIndex, tmp_path: Path) -> list[str]:
    return [
        "pack",
        str(plugin),
        "-o",
        str(tmp_path / "out"),
        "--index-url",
        index.url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--profile",
        "uv-pip",
        "--uv",
        own_uv_version(),
        "--no-start",
    ]


def _plugin(tmp_path: Path) -> Path:
    files = {"pyproject.toml": PYPROJECT, "manifest.yaml": manifest_yaml(arch=("amd64", "arm64"))}
    return make_plugin(tmp_path / "src", files)


def _on_a_terminal(argv: list[str]) -> str:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dify_repack", *argv], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def _lines(output: str) -> list[str]:
    """The screen's text lines, live-view redraws included, without colours and cursor moves."""
    return [line.strip() for line in ANSI.sub("", output).replace("\r", "\n").splitlines() if line.strip()]


def test_a_terminal_gets_a_live_view_of_every_phase_with_true_counts(tmp_path: Path, index: LocalIndex) -> None:
    output = _on_a_terminal(_argv(_plugin(tmp_path), index, tmp_path))
    assert "\x1b[" in output  # a live view redraws in place
    lines = _lines(output)
    text = "\n".join(lines)
    # Live lines while work runs (with their elapsed time), then a line saying how it ended.
    for phase in (
        "resolving for cp312-linux-amd64",
        "resolving for cp312-linux-arm64",
        "building puresdist 1.0.0 from its sdist",
        "locking uv.lock against ./wheels",
        "writing tester-demo_0.1.0-offline.difypkg",
        f"1/2 uv-pip uv {own_uv_version()} amd64",
        "2/2 requirements",
    ):
        assert re.search(rf"{re.escape(phase)}.*\d+:\d\d:\d\d", text), phase
    ended = [line.removeprefix("• ") for line in lines if line.startswith("• ")]
    order = [
        "resolved cp312-linux-",
        "built puresdist-1.0.0",
        "verifying: 1 live replay + 1 static check",
        "1/2 uv-pip",
    ]
    positions = [next(i for i, line in enumerate(ended) if line.startswith(prefix)) for prefix in order]
    assert positions == sorted(positions), ended
    assert any(line.startswith(f"1/2 uv-pip uv {own_uv_version()} amd64: ok in") for line in ended)
    # Counts: a fresh cache had nothing, so every file in it now was downloaded, and said so once.
    downloads = [re.match(r"downloading (\d+) files? \(.*\); (\d+) already in the cache", line) for line in ended]
    announced = [(int(match[1]), int(match[2])) for match in downloads if match]
    cached_files = [path for path in (tmp_path / "cache" / "files").rglob("*") if path.is_file()]
    assert sum(count for count, _ in announced) == len(cached_files)
    assert all(already == 0 for _, already in announced)
    assert "wrote" in text


def test_a_log_gets_plain_lines_and_quiet_gets_none(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(_plugin(tmp_path), index, tmp_path)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\x1b[" not in err and not re.search(r"\d:\d\d:\d\d", err)
    lines = err.splitlines()
    assert "• resolving for cp312-linux-amd64…" in lines
    assert f"• 1/2 uv-pip uv {own_uv_version()} amd64…" in lines
    assert any(line.startswith("• downloading ") for line in lines)
    # The same package again, quietly: not a line on stderr, and its verification is remembered.
    assert main([*argv, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "remembered from" in captured.out


@pytest.mark.parametrize("argv", [["--version"], ["--version", "--json"], ["-q", "--version"]])
def test_version_imports_none_of_the_heavy_libraries(argv: list[str]) -> None:
    # `dify-repack --version` must answer in well under 0.3 s: the commands and their libraries load lazily.
    script = (
        "import sys\n"
        "from dify_repack.cli import main\n"
        f"assert main({argv!r}) == 0\n"
        "heavy = {'httpx', 'rich', 'cryptography', 'tomlkit', 'yaml', 'pathspec', 'platformdirs'}\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"
