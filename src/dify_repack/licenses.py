"""A wheel's license as a reviewer needs it: an SPDX id or expression where the metadata maps to one, and a flag
for licenses that usually need a person's attention (none declared, the GPL family).

Order of trust (PEP 639 first): ``License-Expression``, then ``License ::`` trove classifiers, then the free-text
``License`` field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import IO

from cyclonedx import spdx

from .wheelfile import NotAWheel, read_metadata

# Trove classifiers that name one license exactly; broader ones ("BSD License", "GPL") keep their name.
_CLASSIFIERS = {
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "zlib/libpng License": "Zlib",
    "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "Universal Permissive License (UPL)": "UPL-1.0",
    "Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "GNU Affero General Public License v3": "AGPL-3.0-only",
    "GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
}
# Free-text spellings seen in the License field of popular wheels, compared without case, spaces or dashes.
_ALIASES = {
    "mit": "MIT",
    "mitlicense": "MIT",
    "themitlicense": "MIT",
    "apache2": "Apache-2.0",
    "apache2.0": "Apache-2.0",
    "apachelicense2.0": "Apache-2.0",
    "apachelicense,version2.0": "Apache-2.0",
    "apachesoftwarelicense": "Apache-2.0",
    "apachesoftwarelicense2.0": "Apache-2.0",
    "bsd3clause": "BSD-3-Clause",
    "3clausebsd": "BSD-3-Clause",
    "newbsd": "BSD-3-Clause",
    "bsd3": "BSD-3-Clause",
    "bsd2clause": "BSD-2-Clause",
    "psf": "PSF-2.0",
    "isclicense": "ISC",
}
_COPYLEFT = re.compile(r"\bA?GPL|\bGNU (Affero )?General Public License", re.IGNORECASE)
_WEAK_COPYLEFT = re.compile(r"\bLGPL|\bGNU Lesser General Public License", re.IGNORECASE)


@dataclass(frozen=True)
class License:
    text: str  # the SPDX id/expression, or the declared name; "" when nothing is declared
    spdx: bool  # ``text`` is an SPDX id or expression
    attention: str | None  # why a reviewer should look, or None

    def __str__(self) -> str:
        return self.text or "unknown"


def license_of(metadata: Message) -> License:
    """The license a wheel's METADATA declares."""
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return _judged(expression, spdx.is_expression(expression) or spdx.is_supported_id(expression))
    classifiers = [
        value.split("::")[-1].strip()
        for value in metadata.get_all("Classifier") or []
        if value.startswith("License ::") and value.count("::") >= 2
    ]
    mapped = [_CLASSIFIERS[name] for name in classifiers if name in _CLASSIFIERS]
    if mapped:
        text = " OR ".join(dict.fromkeys(mapped))
        return _judged(text, True)
    field = (metadata.get("License") or "").strip()
    first_line = field.splitlines()[0].strip() if field else ""
    if first_line and first_line.upper() not in ("UNKNOWN", "NONE"):
        fixed = spdx.fixup_id(first_line) or _ALIASES.get(re.sub(r"[\s_-]", "", first_line.lower()))
        if fixed:
            return _judged(fixed, True)
        if spdx.is_expression(first_line):
            return _judged(first_line, True)
        return _judged(first_line[:100], False)
    if classifiers:
        return _judged(" OR ".join(dict.fromkeys(classifiers)), False)
    return License("", False, "no license declared: check the project's terms")


def _judged(text: str, is_spdx: bool) -> License:
    if _WEAK_COPYLEFT.search(text):
        return License(text, is_spdx, "LGPL (weak copyleft): check how it is linked and redistributed")
    if _COPYLEFT.search(text):
        return License(text, is_spdx, "GPL family (copyleft): check the terms before redistribution")
    return License(text, is_spdx, None)


def wheel_license(wheel: Path | IO[bytes]) -> License:
    """The license in a wheel's ``*.dist-info/METADATA``, read without extracting the wheel."""
    try:
        text = (read_metadata(wheel) or b"").decode("utf-8", errors="replace")
    except NotAWheel:
        text = ""  # a wheel that cannot be read declares nothing we can trust
    return license_of(HeaderParser().parsestr(text))
