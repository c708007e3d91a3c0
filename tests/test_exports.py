"""Every name a corral package lists in ``__all__`` resolves (an attribute, or a submodule, as
``from package import *`` would find it).

Packages export lazily (``corral._lazy``): a renamed or moved module leaves the export table
pointing at nothing, and nothing fails until a caller first asks for that name. Each package is
imported in a fresh interpreter, so a name that only resolves because another import ran first
is caught too.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import corral

PACKAGES = sorted(
    f"corral.{m.name}" for m in pkgutil.iter_modules(corral.__path__) if m.ispkg
)

CHECK = """
import importlib, sys
pkg = importlib.import_module(sys.argv[1])
missing = []
for name in getattr(pkg, "__all__", ()):
    try:
        getattr(pkg, name)
    except AttributeError:
        try:
            importlib.import_module(f"{sys.argv[1]}.{name}")
        except Exception as err:
            missing.append(f"{name}: {type(err).__name__}: {err}")
    except Exception as err:
        missing.append(f"{name}: {type(err).__name__}: {err}")
print("\\n".join(missing))
sys.exit(1 if missing else 0)
"""


def test_packages_found() -> None:
    assert {"corral.cli", "corral.sandbox", "corral.tools", "corral.runtime"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_resolves(package: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHECK, package], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{package}.__all__ names that do not resolve:\n{proc.stdout}"
