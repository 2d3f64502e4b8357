"""dify-repack: turn a Dify plugin into a package that installs with no internet access."""

from __future__ import annotations

__version__ = "0.1.0"
