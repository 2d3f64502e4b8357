"""Ctrl-C and SIGTERM in every phase of a real ``dify-repack pack`` process, against a deliberately slow index.

Each run must stop within about a second: exit 130 (SIGINT) or 143 (SIGTERM) with the one line
``error: interrupted``, no traceback, no ``wrote``, nothing in -o, no partial file or temp folder left in the
cache or TMPDIR, and no child process alive (found by the run's folder in their argv, environment or cwd).
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builders import FAKE_SDK_FILES, LocalIndex, make_plugin, make_wheel, manifest_yaml
from dify_repack import cancel
from dify_repack.bundle import write_bundle
from dify_repack.dsl import read_dsl, write_offline_copy
from dify_repack.errors import Interrupted
from dify_repack.package import write_package
from dify_repack.uvbin import own_uv_version
from processes import alive, gone

STOP_WITHIN = 2.0  # seconds from the signal to the exit; the goal is about one


@dataclass
class SlowIndex:
    """A PEP 503 index that can stall uv's page requests or trickle files to dify-repack's own downloads."""

    index: LocalIndex
    stall_pages: bool = False  # uv waits for /simple/ pages forever: the run hangs in "resolving"
    trickle_files: bool = False  # dify-repack's downloads get one byte every 0.1 s: "downloading" forever
    trickled: int = 0  # downloads that were being trickled (or left without an answer)
    silent_files: bool = False  # dify-repack's downloads get no answer at all: only a shut socket ends the wait
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return self.index.url


@pytest.fixture
def slow_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowIndex]:
    root = tmp_path_factory.mktemp("slow-index")
    local = LocalIndex(root)
    files = local.files
    files.mkdir(parents=True)
    make_wheel(files, "dify_plugin", "0.7.4", files=FAKE_SDK_FILES, requires=("helper>=1",))
    make_wheel(files, "helper", "1.0.0")
    _slow_sdist(files)
    local.publish()
    slow = SlowIndex(local)

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            ours = self.headers.get("User-Agent", "").startswith("dify-repack")
            if slow.stall_pages and self.path.startswith("/simple/") and not ours:
                slow.stopping.wait(300)
            elif slow.silent_files and self.path.startswith("/files/") and ours:
                slow.trickled += 1
                slow.stopping.wait(300)
            elif slow.trickle_files and self.path.startswith("/files/") and ours:
                self._trickle((root / self.path.split("?")[0].lstrip("/")).read_bytes())
            else:
                super().do_GET()

        def _trickle(self, data: bytes) -> None:
            slow.trickled += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for offset in range(len(data)):
                    self.wfile.write(data[offset : offset + 1])
                    self.wfile.flush()
                    if slow.stopping.wait(0.1):
                        return
            except OSError:
                pass  # the client went away, as it should when interrupted

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    local.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        yield slow
    finally:
        slow.stopping.set()
        server.shutdown()
        server.server_close()


_SLOW_BACKEND = textwrap.dedent(
    """\
    import os, time
    METADATA = "Metadata-Version: 2.1\\nName: slowsdist\\nVersion: 1.0.0\\n"

    def get_requires_for_build_wheel(config_settings=None):
        return []

    def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
        info = os.path.join(metadata_directory, "slowsdist-1.0.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as handle:
            handle.write(METADATA)
        return "slowsdist-1.0.0.dist-info"

    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        time.sleep(300)  # a long compile that prints nothing
        raise SystemExit(1)
    """
)


def _slow_sdist(directory: Path) -> None:
    """An sdist whose metadata comes at once but whose wheel build never ends: the run hangs in "building"."""
    members = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "slowsdist"\nversion = "1.0.0"\n',
        "backend.py": _SLOW_BACKEND,
        "PKG-INFO": "Metadata-Version: 2.1\nName: slowsdist\nVersion: 1.0.0\n",
    }
    with tarfile.open(directory / "slowsdist-1.0.0.tar.gz", "w:gz") as archive:
        for member, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"slowsdist-1.0.0/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@dataclass
class Stopped:
    code: int
    seconds: float  # from the signal to the exit
    out: str
    err: str
    children: int  # processes the run had started when the signal came


def _scrubbed_env(root: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PIP_", "UV_", "DIFY_", "PYTHON")) and key not in ("GITHUB_TOKEN", "TMPDIR")
    }
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return {**env, "PIP_CONFIG_FILE": os.devnull, "TMPDIR": str(root / "tmp"), "COLUMNS": "200"}


def _pack(root: Path, argv: list[str]) -> list[str]:
    """``pack ARGV`` into ``root``/out with its cache in ``root``/cache."""
    return ["pack", *argv, "-o", str(root / "out"), "--cache-dir", str(root / "cache")]


def _run_and_signal(
    root: Path,
    argv: list[str],
    phase: str | None,
    signals: tuple[int, ...],
    *,
    settle: float = 0.5,
    ready: Callable[[list[int]], bool] = lambda _children: True,
    entry: tuple[str, ...] = (sys.executable, "-m", "dify_repack"),
) -> Stopped:
    """Start ``dify-repack ARGV``, wait for a stderr line holding ``phase`` (if any), then until ``ready(pids of
    the run's children)``, then ``settle`` seconds, then send ``signals`` 0.2 s apart."""
    process = subprocess.Popen(
        [*entry, *argv], env=_scrubbed_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            err.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while phase is not None:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, f"exited (code {process.wait()}) before {phase!r}:\n{''.join(err)}"
            if phase in line:
                break
        while phase is None and not catches(process.pid, signal.SIGTERM):
            assert time.monotonic() < deadline and process.poll() is None, f"no handler:\n{''.join(err)}"
        for pause in (0.0, settle):
            # Again after settling: a short-lived child (an interpreter probe before uv starts) may have been
            # what looked ready, and on a loaded machine the real work can start well after it ended.
            time.sleep(pause)
            while not ready([pid for pid in alive(str(root)) if pid != process.pid]):
                assert time.monotonic() < deadline and process.poll() is None, f"never ready:\n{''.join(err)}"
                time.sleep(0.1)
        assert process.poll() is None, f"finished before the signal:\n{''.join(err)}"
        children = len([pid for pid in alive(str(root)) if pid != process.pid])
        sent = time.monotonic()
        for number, signum in enumerate(signals):
            if number:
                time.sleep(0.2)
            process.send_signal(signum)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after the signal:\n{''.join(err)}")
        seconds = time.monotonic() - sent
        reader.join(5)
        assert process.stdout is not None
        return Stopped(code, seconds, process.stdout.read(), "".join(err), children)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _assert_stopped_cleanly(stopped: Stopped, signum: int, root: Path) -> None:
    print(
        f"stopped in {stopped.seconds:.2f} s, {stopped.children} children killed"
    )  # shown with -s: the figure the README quotes
    assert stopped.code == 128 + signum, stopped.err
    assert stopped.seconds < STOP_WITHIN, f"took {stopped.seconds:.2f} s to stop"
    assert "Traceback" not in stopped.err and "Traceback" not in stopped.out
    errors = [line for line in stopped.err.splitlines() if "error" in line.lower()]
    assert errors == ["error: interrupted"], stopped.err
    assert "wrote" not in stopped.out + stopped.err
    out = root / "out"
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    leftovers = [path for path in root.rglob("*") if path.name.endswith(".part")]
    assert not leftovers, leftovers
    temp = root / "tmp"
    assert not list(temp.iterdir()), list(temp.iterdir())
    assert not list((root / "cache" / "tmp").glob("*")) if (root / "cache" / "tmp").is_dir() else True
    assert gone(str(root), within=1.0), f"children left: {alive(str(root))}"


@dataclass(frozen=True)
class Phase:
    requirements: str
    line: str  # the progress line that says the run has reached the phase; then a child or a download is awaited
    stall_pages: bool = False
    trickle_files: bool = False
    silent_files: bool = False
    verify: bool = False


PHASES = {
    "resolving": Phase("dify_plugin==0.7.4\n", "resolving", stall_pages=True),
    "downloading": Phase("dify_plugin==0.7.4\n", "downloading", trickle_files=True),
    # Blocked reading a socket that gets nothing: no check runs until the stop request shuts the socket.
    "waiting for a silent server": Phase("dify_plugin==0.7.4\n", "downloading", silent_files=True),
    "building an sdist": Phase("dify_plugin==0.7.4\nslowsdist\n", "building slowsdist"),
    "verifying": Phase("dify_plugin==0.7.4\n", "verifying", verify=True),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_signal_in_each_phase_stops_the_run_cleanly(
    tmp_path: Path, slow_index: SlowIndex, phase: str, signum: int, request: pytest.FixtureRequest
) -> None:
    setting = PHASES[phase]
    slow_index.stall_pages, slow_index.trickle_files = setting.stall_pages, setting.trickle_files
    slow_index.silent_files = setting.silent_files
    if setting.verify:
        request.getfixturevalue("python312")
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": setting.requirements})
    argv = [str(plugin), "--index-url", slow_index.url]
    argv += ["--uv", own_uv_version()] if setting.verify else ["--no-verify"]

    def under_way(children: list[int]) -> bool:
        return slow_index.trickled > 0 if setting.trickle_files or setting.silent_files else bool(children)

    stopped = _run_and_signal(tmp_path, _pack(tmp_path, argv), setting.line, (signum,), ready=under_way)
    assert stopped.children or slow_index.trickled, f"{phase} was not under way"
    _assert_stopped_cleanly(stopped, signum, tmp_path)


def test_a_second_ctrl_c_neither_hangs_nor_prints_a_traceback(tmp_path: Path, slow_index: SlowIndex) -> None:
    slow_index.trickle_files = True
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    argv = [str(plugin), "--index-url", slow_index.url, "--no-verify"]
    stopped = _run_and_signal(
        tmp_path, _pack(tmp_path, argv), "downloading", (signal.SIGINT, signal.SIGINT, signal.SIGINT)
    )
    assert slow_index.trickled
    _assert_stopped_cleanly(stopped, signal.SIGINT, tmp_path)


def test_fetching_a_url_source(tmp_path: Path, slow_index: SlowIndex) -> None:
    slow_index.trickle_files = True
    url = slow_index.url.replace("/simple", "/files/helper-1.0.0-py3-none-any.whl")
    argv = [url + "?as=plugin.difypkg", "--no-verify"]
    stopped = _run_and_signal(
        tmp_path, _pack(tmp_path, argv), None, (signal.SIGINT,), ready=lambda _children: slow_index.trickled > 0
    )
    _assert_stopped_cleanly(stopped, signal.SIGINT, tmp_path)


def test_a_batch_side_by_side(tmp_path: Path, slow_index: SlowIndex) -> None:
    slow_index.trickle_files = True
    first = make_plugin(tmp_path / "one", {"requirements.txt": "dify_plugin==0.7.4\n"})
    second = make_plugin(tmp_path / "two", {"requirements.txt": "helper\n", "manifest.yaml": manifest_yaml(name="two")})
    argv = [str(first), str(second), "-j", "2", "--index-url", slow_index.url, "--no-verify"]
    stopped = _run_and_signal(tmp_path, _pack(tmp_path, argv), "downloading", (signal.SIGTERM,), settle=1.0)
    _assert_stopped_cleanly(stopped, signal.SIGTERM, tmp_path)


def test_verify_waiting_for_a_plugin_that_never_starts(tmp_path: Path, slow_index: SlowIndex, python312: Path) -> None:
    """The replays run in worker threads; the plugin one starts is killed with its process group."""
    silent = "import time\ntime.sleep(600)  # never sends a heartbeat\n"
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n", "main.py": silent})
    argv = [str(plugin), "--no-verify", "--index-url", slow_index.url]
    packed = subprocess.run(
        [sys.executable, "-m", "dify_repack", *_pack(tmp_path, argv)],
        env=_scrubbed_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert packed.returncode == 0, packed.stderr
    (written,) = (tmp_path / "out").iterdir()
    package = written.rename(tmp_path / written.name)
    argv = ["verify", str(package), "--profile", "uv-pip", "--uv", own_uv_version()]
    argv += ["--cache-dir", str(tmp_path / "cache")]

    def plugin_started(children: list[int]) -> bool:
        return bool(set(children) & set(alive("-m\0main")))

    stopped = _run_and_signal(tmp_path, argv, "verifying:", (signal.SIGINT,), ready=plugin_started)
    assert stopped.children
    _assert_stopped_cleanly(stopped, signal.SIGINT, tmp_path)


# The console script as a user starts it; `python -m dify_repack` where it is not installed.
_SCRIPT = Path(sys.executable).with_name("dify-repack")
ENTRY = (str(_SCRIPT),) if _SCRIPT.is_file() else (sys.executable, "-m", "dify_repack")


@pytest.mark.parametrize(
    ("signum", "delay"),
    [(signal.SIGINT, delay) for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.15, 0.2)]
    + [(signal.SIGTERM, delay) for delay in (0.0, 0.05, 0.15)],
    ids=lambda value: f"{value}s" if isinstance(value, float) else signal.Signals(value).name,
)
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_a_signal_while_the_tool_is_still_starting_ends_it_as_any_interrupt(
    tmp_path: Path, slow_index: SlowIndex, signum: int, delay: float, as_json: bool
) -> None:
    """From the entry point's first line on (when the process first catches SIGTERM, which Python alone does not),
    while the command line and its libraries are imported: the usual line and code, never a traceback."""
    slow_index.stall_pages = True  # the run cannot finish on its own meanwhile
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    argv = _pack(tmp_path, [str(plugin), "--index-url", slow_index.url, "--no-verify", *(["--json"] * as_json)])
    stopped = _run_and_signal(tmp_path, argv, None, (signum,), settle=delay, entry=ENTRY)
    _assert_stopped_cleanly(stopped, signum, tmp_path)
    if as_json:
        document = json.loads(stopped.out)
        assert (document["schema"], document["status"]) == (1, "error")
        assert document["error"] == {"message": "interrupted", "tip": None, "exit_code": 128 + signum}
    else:
        assert stopped.out == ""


def _new_modules(statement: str) -> set[str]:
    script = f"import sys\nbefore = set(sys.modules)\n{statement}\nprint(*sorted(set(sys.modules) - before))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_the_entry_point_catches_signals_before_it_imports_anything_heavy() -> None:
    """Only the interpreter's own start is left uncovered: what the console script loads before the handlers
    (the package and its entry module) imports nothing but ``signal``."""
    ours = _new_modules("from dify_repack.__main__ import entrypoint")
    assert ours - _new_modules("import signal") == {"dify_repack", "dify_repack.__main__"}


def test_zip_writing_stops_between_entries_and_leaves_no_file(tmp_path: Path) -> None:
    make_plugin(tmp_path / "plugin", {})
    output = tmp_path / "out" / "p.difypkg"
    cancel.request(signal.SIGINT)
    try:
        with pytest.raises(Interrupted):
            write_package(tmp_path / "plugin", output)
    finally:
        cancel.reset()
    assert list(output.parent.iterdir()) == []


def test_an_interrupted_bundle_or_dsl_copy_leaves_neither_file_nor_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    package = write_package(make_plugin(tmp_path / "plugin", {}), tmp_path / "p.difypkg").path
    identifier = f"tester/demo:0.1.0@{'c0' * 32}"
    app = tmp_path / "app.yml"
    app.write_text(
        "kind: app\nversion: 0.3.0\napp: {mode: workflow, name: app}\ndependencies:\n"
        f"  - {{type: marketplace, value: {{marketplace_plugin_unique_identifier: '{identifier}'}}}}\n"
    )
    dsl = read_dsl(app)
    out = tmp_path / "out"
    cancel.request(signal.SIGINT)
    try:
        with pytest.raises(Interrupted):
            write_bundle([package], out / "plugins.difybndl")
        with pytest.raises(Interrupted):
            write_offline_copy(dsl, {0: identifier}, out / "app.offline.yml")
    finally:
        cancel.reset()
    assert not out.exists() or list(out.iterdir()) == []
    assert list(temp.iterdir()) == []


def test_a_run_that_cannot_unwind_is_ended_after_the_grace_period() -> None:
    """Work stuck where no check reaches (here: a plain sleep) does not keep an interrupted process alive."""
    code = textwrap.dedent(
        """\
        import os, signal, time
        from dify_repack.cli import _signals
        _signals.STOP_GRACE_SECONDS = 0.5
        with _signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(20)
        """
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 143 and result.stderr == "error: interrupted\n"
    assert time.monotonic() - started < 5
