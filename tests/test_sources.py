"""Sources: parsing what the user typed; downloads from a fake Marketplace and fake GitHub on 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from dify_repack.errors import NetworkError, PackageError, UsageError
from dify_repack.package import zip_checksum
from dify_repack.sources import (
    PluginId,
    ReleaseAsset,
    fetch_source,
    latest_on_marketplace,
    parse_source,
    read_source_list,
)
from fakeweb import FakeWeb, Reply, private_ca, serve

CHECKSUM = "ab" * 32
RELEASE_PATH = "/owner/repo/releases/download/v1.0/demo.difypkg"
MARKET_PATH = "/api/v1/plugins/langgenius/demo/0.0.1/download"
PLUGIN_PATH = "/api/v1/plugins/langgenius/demo"
LEGACY_PATH = "/api/v1/plugins/download"


def plugin_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.yaml", "author: langgenius\nname: demo\nversion: 0.0.1\n")
    return buffer.getvalue()


ZIP = plugin_zip()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inherited settings would send requests elsewhere, or a token where a test does not expect one.
    for name in ("GITHUB_TOKEN", "GITHUB_URL", "DIFY_MARKETPLACE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    with serve() as server:
        yield server


@pytest.fixture
def other_web() -> Iterator[FakeWeb]:
    with serve() as server:
        yield server


def fetch(text: str, dest: Path, **options: Any) -> Path:
    """fetch_source with retries fast enough for a test."""
    options = {"attempts": 2, "backoff": 0.01, "timeout": 2.0, **options}
    return fetch_source(parse_source(text), dest, **options)


def failure(text: str, dest: Path, **options: Any) -> NetworkError:
    with pytest.raises(NetworkError) as caught:
        fetch(text, dest, **options)
    assert list(dest.glob("*")) == [], "a failed download leaves no file, not even a partial one"
    return caught.value


# Parsing


def test_local_file_and_directory_are_used_in_place(tmp_path: Path) -> None:
    package = tmp_path / "demo.difypkg"
    package.write_bytes(ZIP)
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "manifest.yaml").write_text("name: demo\n")
    dest = tmp_path / "downloads"

    for text, kind in ((str(package), "file"), (str(plugin), "directory")):
        source = parse_source(text)
        assert (source.kind, source.path) == (kind, Path(text))
        assert fetch_source(source, dest) == Path(text)
    assert not dest.exists()


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"no manifest\.yaml"):
        parse_source(str(tmp_path))


def test_marketplace_identifier() -> None:
    plain = parse_source("langgenius/openai_api_compatible:0.0.35")
    assert plain.kind == "marketplace"
    assert plain.plugin == PluginId("langgenius", "openai_api_compatible", "0.0.35")
    assert plain.filename == "langgenius-openai_api_compatible_0.0.35.difypkg"

    pinned = parse_source(f"langgenius/demo:1.2.3-beta.1@{CHECKSUM.upper()}")
    assert pinned.plugin == PluginId("langgenius", "demo", "1.2.3-beta.1", CHECKSUM)
    assert str(pinned.plugin) == f"langgenius/demo:1.2.3-beta.1@{CHECKSUM}"


def test_github_asset_with_a_slash_in_the_tag() -> None:
    source = parse_source("github:owner/my.repo@release/1.0+1/demo.difypkg")
    assert source.kind == "github"
    assert source.release == ReleaseAsset("owner", "my.repo", "release/1.0+1", "demo.difypkg")
    assert source.filename == "demo.difypkg"
    assert source.release.url("https://ghe.example") == (
        "https://ghe.example/owner/my.repo/releases/download/release/1.0%2B1/demo.difypkg"
    )


@pytest.mark.parametrize(
    ("text", "filename"),
    [
        ("https://example.com/files/demo.difypkg", "demo.difypkg"),
        ("https://example.com/get/demo?token=1#top", "demo.difypkg"),
        ("HTTP://example.com/a%2F..%2Fdemo.difypkg", "demo.difypkg"),
    ],
)
def test_url_names_the_download_after_its_last_segment(text: str, filename: str) -> None:
    source = parse_source(text)
    assert (source.kind, source.url, source.filename) == ("url", text, filename)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense", "no such file or directory, and not a Marketplace id"),
        ("./missing.difypkg", "no such file or directory"),
        ("langgenius/openai:latest", "not a Marketplace id"),
        ("langgenius/openai:1.0.0@abc", "not a Marketplace id"),
        ("github:owner/repo", "not a GitHub release asset"),
        ("https://example.com/", "does not end in a file name"),
        ("https://example.com/..", "does not end in a file name"),
        ("https:///demo.difypkg", "names no host"),
    ],
)
def test_unrecognised_sources_name_the_accepted_forms(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_source(text)
    if "github" not in text and "://" not in text:
        assert caught.value.tip is not None
        assert "org/name:version[@checksum]" in caught.value.tip
        assert "github:OWNER/REPO@TAG/ASSET.difypkg" in caught.value.tip


# Source lists


def test_source_list_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "local.difypkg").write_bytes(ZIP)
    listing = tmp_path / "plugins.txt"
    listing.write_text(
        "# plugins for the air-gapped site\n"
        "\n"
        "langgenius/demo:0.0.1   # the demo\n"
        "   github:owner/repo@v1.0/demo.difypkg\n"
        "https://example.com/demo.difypkg#fragment\n"
        "local.difypkg\n"
    )
    sources = read_source_list(listing)
    assert [source.kind for source in sources] == ["marketplace", "github", "url", "file"]
    assert sources[2].url == "https://example.com/demo.difypkg#fragment"
    assert sources[3].path == tmp_path / "local.difypkg", "paths are relative to the list's folder"


def test_source_list_errors_name_the_line(tmp_path: Path) -> None:
    listing = tmp_path / "plugins.txt"
    listing.write_text("langgenius/demo:0.0.1\n# comment\nnot-a-source\n")
    with pytest.raises(UsageError, match=r"plugins\.txt:3: not-a-source: no such file"):
        read_source_list(listing)

    listing.write_text("# nothing yet\n\n")
    with pytest.raises(UsageError, match="lists no sources"):
        read_source_list(listing)

    with pytest.raises(UsageError, match="cannot read the source list"):
        read_source_list(tmp_path / "missing.txt")


# Marketplace


def test_marketplace_download(web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    web.route(MARKET_PATH, Reply(body=ZIP))
    chunks: list[int] = []

    path = fetch("langgenius/demo:0.0.1", tmp_path, marketplace_url=web.url, progress=chunks.append)

    assert path == tmp_path / "langgenius-demo_0.0.1.difypkg"
    assert path.read_bytes() == ZIP
    assert sum(chunks) == len(ZIP)
    assert [request.target for request in web.requests] == [MARKET_PATH]
    assert "authorization" not in web.requests[0].headers, "the GitHub token goes to GitHub only"


def test_marketplace_falls_back_to_the_unique_identifier_form(web: FakeWeb, tmp_path: Path) -> None:
    web.route(LEGACY_PATH, Reply(body=ZIP))
    checksum = zip_checksum_of(ZIP, tmp_path)

    path = fetch(f"langgenius/demo:0.0.1@{checksum}", tmp_path, marketplace_url=web.url)

    assert path.read_bytes() == ZIP
    first, second = web.requests
    assert first.target == MARKET_PATH
    query = parse_qs(urlsplit(second.target).query)
    assert query == {"unique_identifier": [f"langgenius/demo:0.0.1@{checksum}"]}


def zip_checksum_of(data: bytes, tmp_path: Path) -> str:
    """The daemon's checksum of a package given as bytes."""
    (tmp_path / "probe").mkdir(exist_ok=True)
    path = tmp_path / "probe" / "package.difypkg"
    path.write_bytes(data)
    return zip_checksum(path)


@pytest.mark.parametrize("path", [MARKET_PATH, LEGACY_PATH])
def test_marketplace_checksum_must_match_the_download(web: FakeWeb, tmp_path: Path, path: str) -> None:
    # Another plugin's package (or another build of this version) served for a pinned identifier.
    web.route(path, Reply(body=ZIP))
    wanted = "cd" * 32
    dest = tmp_path / "downloads"

    error = failure(f"langgenius/demo:0.0.1@{wanted}", dest, marketplace_url=web.url)

    assert isinstance(error, NetworkError) and error.exit_code == 6
    assert wanted in error.message and zip_checksum_of(ZIP, tmp_path) in error.message
    assert not dest.exists() or not list(dest.iterdir()), "a refused download is not left behind"


def test_marketplace_checksum_is_compared_case_insensitively(web: FakeWeb, tmp_path: Path) -> None:
    web.route(MARKET_PATH, Reply(body=ZIP))
    checksum = zip_checksum_of(ZIP, tmp_path).upper()

    path = fetch(f"langgenius/demo:0.0.1@{checksum}", tmp_path / "downloads", marketplace_url=web.url)

    assert path.read_bytes() == ZIP


def test_marketplace_404_names_the_plugin_and_version(web: FakeWeb, tmp_path: Path) -> None:
    error = failure("langgenius/demo:9.9.9", tmp_path, marketplace_url=web.url)

    assert str(error).startswith("langgenius/demo:9.9.9: not on the Marketplace")
    assert "no plugin langgenius/demo, or no version 9.9.9 of it" in str(error)
    assert error.tip is not None and "@checksum" in error.tip
    assert len(web.requests) == 1, "without a checksum there is no second form to try"


def test_marketplace_404_on_both_forms(web: FakeWeb, tmp_path: Path) -> None:
    error = failure(f"langgenius/demo:9.9.9@{CHECKSUM}", tmp_path, marketplace_url=web.url)

    assert "no version 9.9.9" in str(error)
    assert len(web.requests) == 2


def test_private_marketplace_from_the_environment(
    web: FakeWeb, other_web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web.route(MARKET_PATH, Reply(body=ZIP))
    other_web.route(MARKET_PATH, Reply(body=ZIP))
    monkeypatch.setenv("DIFY_MARKETPLACE_URL", web.url + "/")

    fetch("langgenius/demo:0.0.1", tmp_path / "env")
    assert len(web.requests) == 1

    fetch("langgenius/demo:0.0.1", tmp_path / "argument", marketplace_url=other_web.url)
    assert len(web.requests) == 1, "the argument wins over the environment"
    assert len(other_web.requests) == 1


def test_base_url_must_be_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFY_MARKETPLACE_URL", "marketplace.corp")
    with pytest.raises(UsageError, match=r"DIFY_MARKETPLACE_URL is 'marketplace\.corp', not an http"):
        fetch("langgenius/demo:0.0.1", tmp_path)


# GitHub and plain URLs


def test_github_token_reaches_github_but_not_the_redirect_target(
    web: FakeWeb, other_web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GitHub answers release downloads with a redirect to a storage host with a signed URL.
    monkeypatch.setenv("GITHUB_URL", web.url)
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    web.redirect(RELEASE_PATH, f"{other_web.url}/storage/123?signature=x")
    other_web.route("/storage/123", Reply(body=ZIP))

    path = fetch("github:owner/repo@v1.0/demo.difypkg", tmp_path)

    assert path == tmp_path / "demo.difypkg"
    assert path.read_bytes() == ZIP
    assert web.seen(RELEASE_PATH)[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in other_web.seen("/storage/123")[0].headers


def test_token_goes_with_plain_urls_on_the_github_host_only(
    web: FakeWeb, other_web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    web.route(RELEASE_PATH, Reply(body=ZIP))
    other_web.route(RELEASE_PATH, Reply(body=ZIP))

    fetch(web.url + RELEASE_PATH, tmp_path / "a", github_url=web.url)
    fetch(other_web.url + RELEASE_PATH, tmp_path / "b", github_url=web.url)

    assert web.requests[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in other_web.requests[0].headers


def test_github_404_suggests_a_token(web: FakeWeb, tmp_path: Path) -> None:
    error = failure("github:owner/repo@v1.0/demo.difypkg", tmp_path, github_url=web.url)

    assert str(error) == f"{web.url}{RELEASE_PATH}: not found (HTTP 404)"
    assert error.tip is not None and "GITHUB_TOKEN" in error.tip


def test_403_says_access_denied(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(403, b"forbidden", "text/plain"))

    error = failure(web.url + "/demo.difypkg", tmp_path)

    assert "access denied (HTTP 403)" in str(error)


def test_429_is_retried_then_reported(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(429, b"slow down", "text/plain"))

    error = failure(web.url + "/demo.difypkg", tmp_path, attempts=3)

    assert "rate limited (HTTP 429)" in str(error)
    assert len(web.requests) == 3


def test_429_then_success(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(429), Reply(body=ZIP))

    assert fetch(web.url + "/demo.difypkg", tmp_path).read_bytes() == ZIP
    assert len(web.requests) == 2


def test_html_page_instead_of_a_zip(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(body=b"<html>Sign in</html>", content_type="text/html; charset=utf-8"))

    error = failure(web.url + "/demo.difypkg", tmp_path)

    assert "answered with an HTML page" in str(error)


def test_body_that_is_not_a_zip(web: FakeWeb, tmp_path: Path) -> None:
    web.route(
        "/demo.difypkg",
        Reply(body=b'{"code": -1, "msg": "plugin not found"}', content_type="application/json"),
    )

    error = failure(web.url + "/demo.difypkg", tmp_path)

    assert "(application/json) is not the expected file" in str(error)
    assert '"plugin not found' in str(error), "the first bytes show what came instead"


def test_truncated_body(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(body=ZIP[:20], length=len(ZIP)))

    error = failure(web.url + "/demo.difypkg", tmp_path)

    assert "download interrupted after 20 bytes" in str(error)
    assert f"expected {len(ZIP)}" in str(error), "the message says the body was cut short"


def test_slow_server_times_out(web: FakeWeb, tmp_path: Path) -> None:
    web.route("/demo.difypkg", Reply(body=ZIP, delay=10))

    started = time.monotonic()
    error = failure(web.url + "/demo.difypkg", tmp_path, timeout=0.3)

    assert "timed out after 2 attempts" in str(error)
    assert time.monotonic() - started < 1.5


# Proxies and CA bundles come from the environment


def test_proxy_from_the_environment(web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake server plays the proxy: it receives the full URL of a host that does not exist.
    monkeypatch.setenv("HTTP_PROXY", web.url)
    web.route("http://plugins.invalid/demo.difypkg", Reply(body=ZIP))

    assert fetch("http://plugins.invalid/demo.difypkg", tmp_path).read_bytes() == ZIP
    assert web.requests[0].target == "http://plugins.invalid/demo.difypkg"


def test_no_proxy_from_the_environment(web: FakeWeb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    web.route("/demo.difypkg", Reply(body=ZIP))

    assert fetch(web.url + "/demo.difypkg", tmp_path).read_bytes() == ZIP


def test_ca_bundle_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = private_ca(tmp_path)
    cert = ca.ca
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with serve(tls=(ca.cert, ca.key)) as tls_web:
        tls_web.route("/demo.difypkg", Reply(body=ZIP))
        url = tls_web.url + "/demo.difypkg"

        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        error = failure(url, tmp_path / "untrusted", attempts=1)
        assert "TLS certificate is not trusted (unable to get local issuer certificate)" in str(error)
        assert error.tip is not None and "--cert FILE" in error.tip and "--native-tls" in error.tip

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert fetch(url, tmp_path / "trusted").read_bytes() == ZIP
        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert fetch(url, tmp_path / "requests-bundle").read_bytes() == ZIP


# A Marketplace id without a version: the latest, as the plugin document Dify's console reads names it.


def plugin_document(version: object, identifier: str | None = None) -> Reply:
    plugin = {"plugin_id": "langgenius/demo", "latest_version": version, "latest_package_identifier": identifier}
    return Reply(body=json.dumps({"code": 0, "data": {"plugin": plugin}}).encode(), content_type="application/json")


def test_an_id_without_version_is_parsed_as_the_latest() -> None:
    source = parse_source("langgenius/demo")
    assert source.kind == "marketplace" and source.plugin == PluginId("langgenius", "demo", None)
    assert str(source.plugin) == "langgenius/demo"


def test_the_latest_version_and_its_checksum_are_taken(web: FakeWeb, tmp_path: Path) -> None:
    (tmp_path / "demo.difypkg").write_bytes(ZIP)
    checksum = zip_checksum(tmp_path / "demo.difypkg")
    web.route(PLUGIN_PATH, plugin_document("0.0.1", f"langgenius/demo:0.0.1@{checksum}"))
    web.route(MARKET_PATH, Reply(body=ZIP))

    latest = latest_on_marketplace(parse_source("langgenius/demo"), marketplace_url=web.url)
    assert latest.plugin == PluginId("langgenius", "demo", "0.0.1", checksum)
    assert latest.filename == "langgenius-demo_0.0.1.difypkg" and latest.text == "langgenius/demo"

    path = fetch("langgenius/demo", tmp_path / "dl", marketplace_url=web.url)
    assert path.read_bytes() == ZIP
    assert [request.target for request in web.requests][-2:] == [PLUGIN_PATH, MARKET_PATH]


def test_a_checksum_of_another_release_is_not_taken(web: FakeWeb) -> None:
    web.route(PLUGIN_PATH, plugin_document("0.0.2", f"langgenius/demo:0.0.1@{CHECKSUM}"))
    latest = latest_on_marketplace(parse_source("langgenius/demo"), marketplace_url=web.url)
    assert latest.plugin == PluginId("langgenius", "demo", "0.0.2", None)


def test_other_sources_are_left_as_they_are(tmp_path: Path) -> None:
    source = parse_source("langgenius/demo:0.0.1")
    assert latest_on_marketplace(source, marketplace_url="http://127.0.0.1:9") is source


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(404, b"not found", "text/plain"), "not on the Marketplace at .* \\(HTTP 404\\)"),
        (Reply(body=b"<html>maintenance</html>", content_type="text/html"), "does not name langgenius/demo's latest"),
        (plugin_document(None), "given as None, not x.y.z"),
        (plugin_document("../../x"), "not x.y.z"),
    ],
)
def test_when_the_marketplace_cannot_say_the_error_says_what_to_add(
    web: FakeWeb, tmp_path: Path, reply: Reply, message: str
) -> None:
    web.route(PLUGIN_PATH, reply)
    error = failure("langgenius/demo", tmp_path, marketplace_url=web.url)
    assert re.search(message, error.message)
    assert error.tip is not None and "langgenius/demo:VERSION" in error.tip
    assert [request.target for request in web.requests] == [PLUGIN_PATH], "nothing is downloaded"


def test_a_plugin_document_that_never_ends_is_refused_before_it_fills_the_memory(web: FakeWeb, tmp_path: Path) -> None:
    # 5 KiB on the wire, 5 MiB once inflated: the bound counts what the server's encoding expands to.
    bomb = gzip.compress(b" " * (5 * 1024 * 1024))
    web.route(PLUGIN_PATH, Reply(body=bomb, content_type="application/json", headers={"Content-Encoding": "gzip"}))
    error = failure("langgenius/demo", tmp_path, marketplace_url=web.url)
    assert "the answer is larger than 4194304 bytes" in error.message
