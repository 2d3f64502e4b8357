"""dify-repack: turn a Dify plugin into a package that installs with no internet access.

The command line is a thin layer over this API::

    from dify_repack import PackOptions, pack, verify_package

    result = pack(Path("plugin.difypkg"), PackOptions(arch="all"))
    report = verify_package(result.output)
    assert report.ok
"""

import importlib

# Not typing's (nor `from __future__`): the console entry point runs this module before it can install its signal
# handlers, so it imports nothing the interpreter has not loaded already. mypy reads any TYPE_CHECKING as true.
TYPE_CHECKING = False

__version__ = "0.1.0"

# The API is imported on first use: `dify-repack --version` and the CLI's start must not pay for
# httpx, cryptography and tomlkit (PEP 562).
_EXPORTS = {
    "DifyRepackError": "errors",
    "ExitCode": "errors",
    "Inspection": "inspect",
    "inspect_package": "inspect",
    "PackOptions": "packing",
    "PackResult": "packing",
    "pack": "packing",
    "Indexes": "resolve",
    "generate_keypair": "signing",
    "sign_package": "signing",
    "verify_signature": "signing",
    "Target": "targets",
    "VerifyOptions": "verify",
    "VerifyReport": "verify",
    "verify_package": "verify",
}

if TYPE_CHECKING:
    from .errors import DifyRepackError, ExitCode
    from .inspect import Inspection, inspect_package
    from .packing import PackOptions, PackResult, pack
    from .resolve import Indexes
    from .signing import generate_keypair, sign_package, verify_signature
    from .targets import Target
    from .verify import VerifyOptions, VerifyReport, verify_package


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dify_repack' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DifyRepackError",
    "ExitCode",
    "Indexes",
    "Inspection",
    "PackOptions",
    "PackResult",
    "Target",
    "VerifyOptions",
    "VerifyReport",
    "__version__",
    "generate_keypair",
    "inspect_package",
    "pack",
    "sign_package",
    "verify_package",
    "verify_signature",
]
