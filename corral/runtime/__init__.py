"""The launcher runtime shared by ``corral run`` (Mode 2) and ``corral mcp`` (Mode 1).

It assembles the parts below it (sandbox, proxy, credentials, audit) into one product, so both
modes get the same egress wiring and the same audit wiring. ``cli`` and ``mcp`` use it; the
packages it assembles never import it (DESIGN "The house": dependencies point down).

Public API::

    egress = Egress(policy, proxy_audit=trail_for, upstream_proxy=url)   # secrets resolved, CA made
    spec = egress.prepare(spec)             # proxy/DNS ports, proxy + CA env, trust bundle
    egress.attach(sb)                       # listeners in sb's netns; proxy serves as its own uid
    egress.detach()                         # stop the proxy (its uid goes with the sandbox)
    run_command(spec, argv, hooks=EgressHooks(...))   # the same, as ``RunHooks``
    SandboxProvider(spec, opener=proxied_opener(policy, ...))         # the same, for Mode 1

Submodules load lazily: ``corral run`` without a policy imports none of the proxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.runtime.egress import Egress, EgressHooks, proxied_opener

__all__ = ["Egress", "EgressHooks", "proxied_opener"]

__getattr__ = lazy_exports(
    "corral.runtime", {"Egress": "egress", "EgressHooks": "egress", "proxied_opener": "egress"}
)
