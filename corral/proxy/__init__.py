"""The egress proxy: every connection out of a sandbox is decided, audited and maybe injected.

It runs in a child process of the launcher, started only by
``corral.runtime.proxyproc.ProxyProcess`` (which calls ``ProxyService.serve_child`` in the
child); its audit events go to the launcher's relay through ``RelayAudit``. The light
``agent_env``/``trust_bundle`` helpers compute what the sandbox gets without importing
asyncio, dnspython or cryptography.

Submodules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.proxy import sigv4
    from corral.proxy.agentenv import agent_env, trust_bundle
    from corral.proxy.audit import NullAudit, RelayAudit
    from corral.proxy.service import ProxyService, inspected_hosts
    from corral.proxy.tls import CertificateAuthority, UpstreamContexts

# ``sigv4`` (the helper preloads it before a drop of privileges) and ``dns`` (its answer() serves
# a run without egress rules too) are public submodules.
# The server's relay (corral.server.relay) reuses the proxy's decision core and its request and
# response machinery rather than copies: those submodules are public too.
__all__ = ["CertificateAuthority", "NullAudit", "ProxyService", "RelayAudit", "UpstreamContexts",
           "agent_env", "decide", "decode", "destinations", "dns", "headers", "inject",
           "inspected_hosts", "lookup", "override", "relay_wire", "scrub", "sigv4",
           "trust_bundle", "upstream"]

__getattr__ = lazy_exports(
    "corral.proxy", {"NullAudit": "audit", "ProxyService": "service", "RelayAudit": "audit",
                     "agent_env": "agentenv", "inspected_hosts": "service",
                     "trust_bundle": "agentenv", "CertificateAuthority": "tls",
                     "UpstreamContexts": "tls"}
)
