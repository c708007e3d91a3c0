"""The launcher runtime shared by ``corral run`` (Mode 2) and ``corral mcp`` (Mode 1).

It assembles the parts below it (sandbox, proxy, credentials, audit) into one product, so both
modes get the same egress wiring and the same audit wiring. ``cli`` and ``mcp`` use it; the
packages it assembles never import it (DESIGN "The house": dependencies point down).

Public API::

    audit = open_audit(policy, mode="run", command=argv)   # the store, or CorralError (one line)
    proc = ProxyProcess()                   # fork the proxy child early (``corral run``)
    egress = Egress(policy, proxy_audit=trail_for, upstream_proxy=url)   # secrets resolved, CA made
    spec = egress.prepare(spec)             # proxy/DNS ports, proxy + CA env, trust bundle
    egress.attach(sb)                       # listeners in sb's netns; proxy serves as its own uid
    egress.detach()                         # stop the proxy (its uid goes with the sandbox)
    run_command(spec, argv, hooks=EgressHooks(...))   # the same, as ``RunHooks``
    SandboxProvider(spec, opener=proxied_opener(policy, ...))         # the same, for Mode 1

    run_agent(spec, argv, policy=rp, proxy=proc, upstream_proxy=url, finish=close)  # Mode 2
    preflight_mcp(policies, workspace)      # Mode 1 (``corral mcp``): refuse what run refuses
    serve_mcp(policies, workspace=ws, listen=("127.0.0.1", 0), tokens={}, ...)  # or stdio
    with approval_store() as store: ...     # ``corral approvals``: decisions audited

    project, report                         # --project: the server's policy; the run reported

Submodules load lazily: ``corral run`` without a policy imports none of the proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.runtime.audit import LaunchAudit, open_audit
    from corral.runtime.config import upstream_proxy
    from corral.runtime.egress import Egress, EgressHooks, proxied_opener
    from corral.runtime.mode1 import approval_store, preflight_mcp, serve_mcp
    from corral.runtime.mode2 import run_agent
    from corral.runtime.proxyproc import ProxyProcess

__all__ = [
    "Egress", "EgressHooks", "LaunchAudit", "ProxyProcess", "approval_store", "mcp_project",
    "open_audit", "preflight_mcp", "project", "proxied_opener", "report", "run_agent",
    "serve_mcp",
    "upstream_proxy",
]

__getattr__ = lazy_exports("corral.runtime", {
    "Egress": "egress", "EgressHooks": "egress", "proxied_opener": "egress",
    "approval_store": "mode1", "preflight_mcp": "mode1", "serve_mcp": "mode1",
    "LaunchAudit": "audit", "open_audit": "audit", "upstream_proxy": "config",
    "ProxyProcess": "proxyproc", "run_agent": "mode2",
})
