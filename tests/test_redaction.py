"""Secrets are hidden the way pip hides them, wherever a URL or an Authorization header is quoted."""

from __future__ import annotations

import io
import json

import click
import pytest

from dify_repack.credentials import Indexes
from dify_repack.errors import NetworkError
from dify_repack.packing import PackOptions
from dify_repack.redaction import redact
from dify_repack.runner import redact as runner_redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://user:secret@host/simple", "https://user:****@host/simple"),
        (
            "cannot reach https://user:secret@host:8443/simple: refused",
            "cannot reach https://user:****@host:8443/simple: refused",
        ),
        ("https://TOKEN@host/simple", "https://****@host/simple"),  # a lone user name may be a token
        ("https://user:p@ss:w0rd@host/x", "https://user:****@host/x"),  # the last @ ends the userinfo
        ("git+https://u:s@host/repo.git", "git+https://u:****@host/repo.git"),
        ("`http://u:s@127.0.0.1:1/simple/helper/`", "`http://u:****@127.0.0.1:1/simple/helper/`"),
        ("two: http://a:1@x/ and https://b:2@y/", "two: http://a:****@x/ and https://b:****@y/"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ****"),
        ("authorization=Basic dXNlcjpzZWNyZXQ=", "authorization=Basic ****"),
        ("{'Authorization': 'token ghp_x'}", "{'Authorization': 'token ****'}"),
        # Left alone: no userinfo, an @ after the path, an e-mail address.
        ("https://host/simple", "https://host/simple"),
        ("https://host/pkg@1.0", "https://host/pkg@1.0"),
        ("mail me@example.org", "mail me@example.org"),
    ],
)
def test_redact(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_the_runner_uses_the_same_redaction() -> None:
    assert runner_redact is redact


def test_errors_redact_their_message_and_tip() -> None:
    error = NetworkError("https://u:secret@h/x: HTTP 500", tip="retry https://u:secret@h/")
    assert "secret" not in str(error) + error.message + str(error.tip)
    assert error.message == "https://u:****@h/x: HTTP 500"


def test_index_options_never_show_their_password() -> None:
    indexes = Indexes("https://u:secret@h/simple", ("https://v:other@i/simple",))
    assert "secret" not in repr(indexes) and "other" not in repr(indexes)
    assert "secret" not in repr(PackOptions(indexes=indexes))


def test_reported_lines_hide_passwords_whoever_wrote_them() -> None:
    from rich.console import Console

    from dify_repack.report import ConsoleReporter

    out = io.StringIO()
    reporter = ConsoleReporter(Console(file=out, width=200))
    reporter.step("downloading https://user:secret@host/plugin.difypkg")
    reporter.warn("https://TOKEN@host/x: slow")
    assert "secret" not in out.getvalue() and "TOKEN" not in out.getvalue()
    assert "https://user:****@host/plugin.difypkg" in out.getvalue()


def test_json_documents_hide_passwords_in_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    from dify_repack.cli._app import cli, emit

    with click.Context(cli, info_name="dify-repack").scope():
        emit("success", {"results": [{"source": "https://user:secret@host/p.difypkg"}]})
    document = json.loads(capsys.readouterr().out)
    assert document["results"][0]["source"] == "https://user:****@host/p.difypkg"
