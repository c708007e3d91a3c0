"""The egress proxy: every connection out of a sandbox is decided, audited and maybe injected.

Public surface for the launcher: ``ProxyService`` (build with the resolved policy and the
resolved secrets; ``.ca.cert_pem``, ``.agent_env()``, ``.trust_bundle()``, ``.start()``,
``.serve_child()``), the light ``agent_env``/``trust_bundle`` helpers of
``corral.proxy.agentenv``, and the audit sink protocol ``AuditSink``.

Submodules load on first use, so the launcher can compute the agent's environment without
importing asyncio, dnspython or cryptography.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.proxy.events import AuditSink
    from corral.proxy.service import ProxyHandle, ProxyService

__all__ = ["AuditSink", "ProxyHandle", "ProxyService"]

__getattr__ = lazy_exports(
    "corral.proxy", {"AuditSink": "events", "ProxyHandle": "service", "ProxyService": "service"}
)
