"""Secrets out of every message: passwords in URLs and tokens in ``Authorization`` text, hidden as pip hides them.

Applied to error messages (``DifyRepackError`` redacts its own), JSON fields, log lines and child output, so a
password typed in ``--index-url https://user:secret@host/simple`` is shown as ``https://user:****@host/simple``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

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


def shown_name(name: str) -> str:
    """A name from a package (a TOML key, an extra, a dotted setting) for a message: as it is when printable and
    short, else quoted and bounded as ``shown_line`` shows it."""
    return redact(name) if name.isprintable() and len(name) <= _SHOWN_CHARS else shown_line(name)


def shown_names(names: Iterable[object], most: int = 10) -> str:
    """Names from a package, comma-separated, each as ``shown_name`` shows it: the first ``most``, then a count."""
    shown = [shown_name(str(name)) for name in names]
    more = f", … ({len(shown) - most} more)" if len(shown) > most else ""
    return ", ".join(shown[:most]) + more


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
