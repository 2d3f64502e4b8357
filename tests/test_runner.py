"""The subprocess wrapper: output as it comes, watchdogs that kill the whole tree, commands logged for -v."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from dify_repack import cancel, runner
from dify_repack.errors import Interrupted
from processes import alive, gone

PY = sys.executable


def _tree(marker: str, *, child_prints: str = "") -> list[str]:
    """A python that starts a silent grandchild (both carry ``marker`` in argv) and then sleeps."""
    grandchild = f"import time; time.sleep(60)  # {marker}"
    code = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
        f"{child_prints} time.sleep(60)  # {marker}"
    )
    return [PY, "-c", code]


def test_output_is_captured_and_the_exit_code_kept() -> None:
    result = runner.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (result.returncode, result.stdout.strip(), result.stderr.strip()) == (3, "out", "err")
    assert result.killed is None


def test_a_missing_program_is_exit_127() -> None:
    assert runner.run(["no-such-program-here"]).returncode == 127


def test_on_line_sees_every_line_of_both_streams_as_it_comes() -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    code = "import sys, time; print('one', flush=True); time.sleep(0.5); print('two', file=sys.stderr); print('x:y')"
    runner.run([PY, "-c", code], on_line=lambda line: seen.append((time.monotonic() - started, line)))
    assert sorted(line for _, line in seen) == ["one", "two", "x:y"]
    first = next(when for when, line in seen if line == "one")
    assert first < 0.45  # delivered before the child finished, not at the end


def test_idle_timeout_kills_a_silent_child_and_its_grandchildren() -> None:
    marker = f"idle-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = runner.run(_tree(marker, child_prints="print('hello', flush=True);"), idle_timeout=0.7)
    elapsed = time.monotonic() - started
    assert result.killed == "idle"
    assert result.returncode == -9
    assert "without output" in result.stderr
    assert "hello" in result.stdout
    assert elapsed < 3
    assert gone(marker), "the grandchild outlived the watchdog"


def test_output_keeps_the_idle_watchdog_away() -> None:
    code = "import time\nfor _ in range(8):\n    print('tick', flush=True); time.sleep(0.2)"
    result = runner.run([PY, "-c", code], idle_timeout=0.6)
    assert result.killed is None and result.returncode == 0


def test_timeout_kills_the_group() -> None:
    marker = f"timeout-{uuid.uuid4().hex}"
    result = runner.run(_tree(marker, child_prints="print('x', flush=True);"), timeout=0.8)
    assert result.killed == "timeout" and result.returncode == -9
    assert "timed out" in result.stderr
    assert gone(marker)


def test_longest_silence_is_measured() -> None:
    code = "import time; print('a', flush=True); time.sleep(0.8); print('b', flush=True); time.sleep(0.1)"
    result = runner.run([PY, "-c", code])
    assert 0.7 < result.longest_silence < 2.0


def test_a_grandchild_left_running_by_a_finished_child_is_killed() -> None:
    marker = f"orphan-{uuid.uuid4().hex}"
    grandchild = f"import time; time.sleep(60)  # {marker}"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {grandchild!r}])"
    started = time.monotonic()
    assert runner.run([PY, "-c", code]).returncode == 0
    assert time.monotonic() - started < 5
    assert gone(marker)


def test_kill_children_kills_every_registered_process_group() -> None:
    marker = f"spawned-{uuid.uuid4().hex}"
    with runner.spawn(_tree(marker)) as process:
        try:
            deadline = time.monotonic() + 5
            while len(alive(marker)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(alive(marker)) == 2
            runner.kill_children()
            assert process.wait(timeout=5) == -signal.SIGKILL
            assert gone(marker)
        finally:
            runner.kill_group(process)


def test_a_stop_request_kills_the_child_and_raises_interrupted() -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    timer = threading.Timer(0.5, cancel.request, args=(signal.SIGTERM,))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Interrupted) as raised:
            runner.run(_tree(marker))
    finally:
        timer.cancel()
        cancel.reset()
    assert time.monotonic() - started < 2
    assert raised.value.exit_code == 143
    assert gone(marker)


def test_the_command_is_logged_at_info_and_its_output_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dify_repack.commands")
    runner.run([PY, "-c", "print('said https://user:secret@example.invalid/simple')", "https://u:pw@h.invalid/x"])
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "dify_repack.commands"]
    assert records[0][0] == logging.INFO and records[0][1].startswith(PY)
    assert "pw" not in records[0][1] and "h.invalid" in records[0][1]
    assert (logging.DEBUG, "said https://user:****@example.invalid/simple") in records


def test_a_killed_child_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = "import tempfile, time; print(tempfile.mkdtemp(), flush=True); time.sleep(60)"
    result = runner.run([PY, "-c", code], env=runner.clean_env(), idle_timeout=0.5)
    made = Path(result.stdout.strip())
    assert result.killed == "idle" and made.is_relative_to(tmp_path)
    assert not made.exists() and list(tmp_path.iterdir()) == []


def test_crlf_and_endless_lines_are_handled() -> None:
    seen: list[str] = []
    code = "import sys; sys.stdout.write('a\\r\\nb\\r\\n' + 'x' * 200000); sys.stdout.flush()"
    result = runner.run([PY, "-c", code], on_line=seen.append)
    assert result.stdout.startswith("a\nb\nxxx") and len(result.stdout) == 4 + 200000
    assert seen[:2] == ["a", "b"] and sum(map(len, seen[2:])) == 200000 and max(map(len, seen)) < 200000
