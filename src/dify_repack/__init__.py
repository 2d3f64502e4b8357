"""dify-repack: turn a Dify plugin into a package that installs with no internet access.

The command line is a thin layer over this API::

    from dify_repack import PackOptions, pack, verify_package

    result = pack(Path("plugin.difypkg"), PackOptions(arch="all"))
    report = verify_package(result.output)
    assert report.ok
"""

from __future__ import annotations

from .errors import DifyRepackError, ExitCode
from .inspect import Inspection, inspect_package
from .packing import PackOptions, PackResult, pack
from .resolve import Indexes
from .signing import generate_keypair, sign_package, verify_signature
from .targets import Target
from .verify import VerifyOptions, VerifyReport, verify_package

__version__ = "0.1.0"

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
