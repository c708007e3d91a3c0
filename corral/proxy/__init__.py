"""The egress proxy: every connection out of a sandbox is decided, audited and maybe injected.

Public surface for the launcher: ``ProxyService`` (build with the resolved policy and the
resolved secrets; ``.ca.cert_pem``, ``.agent_env()``, ``.trust_bundle()``, ``.start()``) and the
audit sink protocol ``AuditSink``.
"""

from corral.proxy.events import AuditSink
from corral.proxy.service import ProxyHandle, ProxyService

__all__ = ["AuditSink", "ProxyHandle", "ProxyService"]
