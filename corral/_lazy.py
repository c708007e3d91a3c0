"""Lazy package exports (PEP 562), shared by every package whose ``__init__`` re-exports.

``corral run`` imports a few light modules of several packages on every launch; importing each
package's whole public surface with them would cost tens of milliseconds. A package lists where
each export lives and installs the ``__getattr__`` built here; an export is imported on first
use and then cached in the package's namespace, so later lookups never come back here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps export -> submodule name."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
