"""Runtime tests reuse the proxy tests' outside host: a TLS + plain HTTP server with its own CA
in a test network namespace (removed in its finalizer)."""

from proxy.conftest import Outside, outside

__all__ = ["Outside", "outside"]
