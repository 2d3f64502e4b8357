"""End to end from the public index: the example plugin and a second small plugin in one bundle, then every
daemon profile replayed offline for each embedded package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dify_repack.bundle import verify_bundle
from dify_repack.cli import main
from dify_repack.verify import PROFILES, VerifyOptions

pytestmark = pytest.mark.network
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text_toolkit"

# A second plugin unlike the example: requirements.txt only, and no dependency but the SDK.
ECHO_FILES = {
    "manifest.yaml": (EXAMPLE / "manifest.yaml")
    .read_text()
    .replace("name: text_toolkit", "name: echo_tool")
    .replace("provider/text_toolkit.yaml", "provider/echo.yaml"),
    "requirements.txt": "dify_plugin==0.7.4\n",
    "main.py": (
        "from dify_plugin import DifyPluginEnv, Plugin\n\n"
        "plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))\n\n"
        "if __name__ == '__main__':\n    plugin.run()\n"
    ),
    "provider/echo.yaml": (EXAMPLE / "provider" / "text_toolkit.yaml")
    .read_text()
    .replace("name: text_toolkit", "name: echo_tool")
    .replace("tools/format_table.yaml", "tools/echo.yaml")
    .replace("provider/text_toolkit.py", "provider/echo.py"),
    "provider/echo.py": (EXAMPLE / "provider" / "text_toolkit.py").read_text(),
    "tools/echo.yaml": (EXAMPLE / "tools" / "format_table.yaml")
    .read_text()
    .replace("name: format_table", "name: echo")
    .replace("tools/format_table.py", "tools/echo.py"),
    "tools/echo.py": (
        "from collections.abc import Generator\nfrom typing import Any\n\n"
        "from dify_plugin import Tool\nfrom dify_plugin.entities.tool import ToolInvokeMessage\n\n\n"
        "class EchoTool(Tool):\n"
        "    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:\n"
        "        yield self.create_text_message(str(tool_parameters['rows']))\n"
    ),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """Both plugins packed in one batch (verification left to the bundle) and bundled."""
    echo = tmp_path_factory.mktemp("echo")
    shutil.copytree(EXAMPLE / "_assets", echo / "_assets")
    for name, text in ECHO_FILES.items():
        (echo / name).parent.mkdir(parents=True, exist_ok=True)
        (echo / name).write_text(text)
    out = tmp_path_factory.mktemp("out")
    target = out / "offline.difybndl"
    argv = ["pack", str(EXAMPLE), str(echo), "-o", str(out), "--cache-dir", str(cache), "--bundle", str(target)]
    assert main([*argv, "--no-verify", "--json", "-q"]) == 0
    return target


@pytest.mark.parametrize("uv_version", ["0.9.26", "latest"])
def test_every_embedded_package_installs_offline_and_starts(bundle: Path, uv_version: str, cache: Path) -> None:
    verification = verify_bundle(bundle, VerifyOptions(uv_versions=[uv_version], arches=["amd64"], cache_dir=cache))
    reports = {report.identifier.split(":")[0]: report for report in verification.reports}
    assert sorted(reports) == ["dify-repack/echo_tool", "dify-repack/text_toolkit"]
    for report in reports.values():
        assert report.isolation.startswith("unshare")
        assert report.ok, json.dumps(report.to_json(), indent=1)
        assert {check.profile for check in report.checks if check.mode == "live"} == set(PROFILES)
        for check in report.checks:
            assert [step.name for step in check.steps] == ["venv", "install", "compile", "import", "start"]
    assert verification.ok
