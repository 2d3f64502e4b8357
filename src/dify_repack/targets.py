"""Install targets: the daemon's CPython on Linux glibc, per CPU architecture.

Everything that depends on the target (markers, wheel tags, uv's ``--python-platform``) is computed here from
explicit values, never from the host, so any host produces the same package.
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass
from functools import cached_property

from packaging.markers import Marker
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from .errors import UsageError

MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# glibc 2.28 (RHEL 8, Debian 10 and newer) runs nearly every manylinux wheel published today; --glibc raises it
# for a daemon host known to be newer, so that wheels built only for a newer glibc are found.
DEFAULT_GLIBC = (2, 28)
DEFAULT_PYTHON = "3.12"
# The daemon always makes a 3.12 venv; 3.10 to 3.13 are accepted for other runners. Anything else is refused at
# once: uv would find no wheels for it and fall back to building sdists for minutes.
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


@dataclass(frozen=True)
class Target:
    python: str  # "3.12"
    arch: str  # "amd64" | "arm64"
    glibc: tuple[int, int] = DEFAULT_GLIBC

    def __str__(self) -> str:
        return f"cp{self.python_nodot}-linux-{self.arch}"

    @property
    def machine(self) -> str:
        return MACHINES[self.arch]

    @property
    def python_nodot(self) -> str:
        return self.python.replace(".", "")

    @property
    def uv_platform(self) -> str:
        """The ``--python-platform`` value uv understands, e.g. ``x86_64-manylinux_2_28``."""
        return f"{self.machine}-manylinux_{self.glibc[0]}_{self.glibc[1]}"

    @property
    def marker_environment(self) -> dict[str, str]:
        """A complete PEP 508 environment: ``Marker.evaluate`` fills missing keys from the host otherwise."""
        major, minor = self.python.split(".")
        return {
            "implementation_name": "cpython",
            "implementation_version": f"{self.python}.0",
            "os_name": "posix",
            "platform_machine": self.machine,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": f"{self.python}.0",
            "python_version": f"{major}.{minor}",
            "sys_platform": "linux",
        }

    @property
    def uv_environment(self) -> str:
        """The ``[tool.uv] environments`` entry: Linux, this machine, this Python only (DAEMON-FACTS §5)."""
        major, minor = (int(part) for part in self.python.split("."))
        return (
            f"sys_platform == 'linux' and platform_machine == '{self.machine}'"
            f" and implementation_name == 'cpython'"
            f" and python_full_version >= '{major}.{minor}' and python_full_version < '{major}.{minor + 1}'"
        )

    @property
    def arch_marker(self) -> str:
        return f"platform_machine == '{self.machine}'"

    @cached_property
    def tags(self) -> tuple[Tag, ...]:
        """Wheel tags in preference order, every manylinux level up to the target glibc included."""
        platforms = [f"manylinux_{self.glibc[0]}_{minor}_{self.machine}" for minor in range(self.glibc[1], 16, -1)]
        platforms += [f"manylinux2014_{self.machine}"]
        if self.machine == "x86_64":
            platforms += [
                "manylinux_2_12_x86_64",
                "manylinux2010_x86_64",
                "manylinux_2_5_x86_64",
                "manylinux1_x86_64",
            ]
        platforms.append(f"linux_{self.machine}")  # what a local sdist build produces
        version = (int(self.python.split(".")[0]), int(self.python.split(".")[1]))
        return (*cpython_tags(version, platforms=platforms), *compatible_tags(version, platforms=platforms))

    def wheel_rank(self, filename: str) -> int | None:
        """Position of the wheel's best tag in ``tags`` (lower is better), or None when it cannot install."""
        _, _, _, wheel_tags = parse_wheel_filename(filename)
        ranks = [self._tag_ranks[tag] for tag in wheel_tags if tag in self._tag_ranks]
        return min(ranks) if ranks else None

    @cached_property
    def _tag_ranks(self) -> dict[Tag, int]:
        ranks: dict[Tag, int] = {}
        for index, tag in enumerate(self.tags):
            ranks.setdefault(tag, index)
        return ranks

    def evaluate(self, marker: Marker | None, extras: frozenset[str] = frozenset()) -> bool:
        if marker is None:
            return True
        environments = [dict(self.marker_environment, extra=extra) for extra in (extras or {""})]
        return any(marker.evaluate(environment) for environment in environments)


# Names people type for the same machines: the kernel's (uname -m) beside Docker's.
ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}
ARCH_CHOICES = (*MACHINES, "all", *ARCH_ALIASES)


def canonical_arch(text: str) -> str:
    """``amd64``, ``arm64`` or ``all`` for any accepted spelling (``x86_64``, ``AArch64``, ...)."""
    name = text.strip().lower()
    name = ARCH_ALIASES.get(name, name)
    if name not in (*MACHINES, "all"):
        raise UsageError(f"--arch {text!r}: choose amd64 (x86_64), arm64 (aarch64) or all")
    return name


def chosen_arches(choice: str | None, manifest_arches: tuple[str, ...]) -> tuple[str, ...]:
    """``--arch``: one architecture, "all", or (None) what the manifest lists."""
    if choice is None:
        return manifest_arches
    name = canonical_arch(choice)
    return tuple(MACHINES) if name == "all" else (name,)


def parse_python(text: str) -> str:
    """``--python``: a CPython minor version this tool can build a target for (see ``PYTHONS``)."""
    version = text.strip()
    if version not in PYTHONS:
        raise UsageError(
            f"--python {text!r}: give a CPython version from {PYTHONS[0]} to {PYTHONS[-1]}",
            tip=f"the daemon always installs into a {DEFAULT_PYTHON} venv, so leave the default unless you know better",
        )
    return version


def parse_glibc(text: str) -> tuple[int, int]:
    """``--glibc 2.28`` as a version tuple; uv knows manylinux levels 2.17 to 2.40."""
    match = re.fullmatch(r"2\.(\d+)", text.strip())
    if not match or not 17 <= int(match.group(1)) <= 40:
        raise UsageError(f"--glibc {text!r}: give the daemon host's glibc as 2.17 ... 2.40 (e.g. 2.28)")
    return 2, int(match.group(1))


def make_targets(
    python: str, arches: list[str] | tuple[str, ...], glibc: tuple[int, int] = DEFAULT_GLIBC
) -> tuple[Target, ...]:
    python = parse_python(python)
    unknown = [arch for arch in arches if ARCH_ALIASES.get(arch, arch) not in MACHINES]
    if unknown:
        raise UsageError(f"unknown architecture {unknown[0]!r}: choose amd64 (x86_64), arm64 (aarch64) or all")
    ordered = sorted({ARCH_ALIASES.get(arch, arch) for arch in arches}, key=list(MACHINES).index)
    return tuple(Target(python, arch, glibc) for arch in ordered)


def is_pure_wheel(filename: str) -> bool:
    _, _, _, wheel_tags = parse_wheel_filename(filename)
    return all(tag.abi == "none" and tag.platform == "any" for tag in wheel_tags)


def host_runs(target: Target) -> bool:
    """Whether this machine can run the target's Linux wheels: the daemon's OS and CPU, not just the CPU.

    A macOS or Windows host on the same CPU would install wheels for itself, so it only gets static checks.
    """
    return sys.platform == "linux" and platform.machine() == target.machine
