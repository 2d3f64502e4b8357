"""Secrets out of every message: passwords in URLs and tokens in ``Authorization`` text, hidden as pip hides them.

Applied to error messages (``DifyRepackError`` redacts its own), JSON fields, log lines and child output, so a
password typed in ``--index-url https://user:secret@host/simple`` is shown as ``https://user:****@host/simple``.
"""

from __future__ import annotations

import logging
import re

MASK = "****"

# The userinfo of a URL: everything up to the last "@" before the path, as urllib splits it. A lone user name
# may itself be a token (``https://TOKEN@host``), so pip hides it whole; a user name with a password stays.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s?#]*)@")
_AUTHORIZATION = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?(?:basic|bearer|token|digest)?\s*)[^\s\"',;]+")


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match.group(2)
    user, colon, _ = userinfo.partition(":")
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


# Text from a package (a requirement line, a DSL entry) quoted in a message: one line, bounded.
_SHOWN_CHARS = 120


def shown_line(value: object) -> str:
    """Untrusted text (or a YAML value) for a message: quoted, control characters escaped, bounded, no password."""
    text = repr(value if not isinstance(value, str) or len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…")
    return redact(text if len(text) <= 2 * _SHOWN_CHARS else text[: 2 * _SHOWN_CHARS] + "…")


def redact(text: str) -> str:
    """``text`` with URL passwords and Authorization values replaced by ``****``."""
    return _AUTHORIZATION.sub(rf"\1{MASK}", _USERINFO.sub(_mask_userinfo, text))


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record, whichever library logged it (httpx logs request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, None
        return True
