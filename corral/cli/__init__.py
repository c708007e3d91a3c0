"""The ``corral`` command line: one module per command group."""

# ``main`` is bound eagerly: it shares its name with its submodule, which a later import would
# otherwise leave in its place. (It is light: ``corral run`` loads it first anyway.)
from corral.cli.main import main

__all__ = ["main"]
