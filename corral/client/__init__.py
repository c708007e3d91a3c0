"""What launchers and the CLI use to talk to ``corral server``: stdlib only, loaded lazily.

Public surface: ``Client`` (JSON over ``http.client``), ``ClientError``, ``check_url``.
Importing this package loads nothing else: ``http.client`` loads with the first ``Client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.client.http import Client, ClientError, check_url

__all__ = ["Client", "ClientError", "check_url"]

__getattr__ = lazy_exports("corral.client", {
    "Client": "http", "ClientError": "http", "check_url": "http",
})
