"""What launchers and the CLI use to talk to ``corral server``: stdlib and httptools, loaded lazily.

Public surface: ``Client`` (JSON over ``corral.client.wire``: a socket and llhttp),
``ClientError`` and its two kinds ``ServerUnavailable`` (retry later) and ``Refused``,
``check_url``; for launchers,
``ServerRun`` (register, heartbeat, ship_events, cursor, approvals, end), ``fetch_policy``
and ``introspect`` (who an MCP caller's token is).
Importing this package loads nothing else: the wire and httptools load with ``Client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.client.http import Client, ClientError, Refused, ServerUnavailable, check_url
    from corral.client.runs import (
        Decision,
        Heartbeat,
        ServerRun,
        event_json,
        fetch_policy,
        introspect,
    )

__all__ = ["Client", "ClientError", "Decision", "Heartbeat", "Refused", "ServerRun",
           "ServerUnavailable", "check_url", "event_json", "fetch_policy", "introspect"]

__getattr__ = lazy_exports("corral.client", {
    "Client": "http", "ClientError": "http", "Refused": "http", "ServerUnavailable": "http",
    "check_url": "http", "Decision": "runs", "Heartbeat": "runs", "ServerRun": "runs",
    "event_json": "runs", "fetch_policy": "runs", "introspect": "runs",
})
