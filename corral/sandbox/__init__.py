"""The isolation harness: one ``Sandbox`` per agent run (DESIGN "Isolation layers").

Public API::

    spec = SandboxSpec(limits=..., files=..., workspace=Path(...), env={...},
                       proxy_port=8080, dns_port=5353, extra_files={"/etc/resolv.conf": b"..."})
    with Sandbox.create(spec, audit=sink) as sb:        # every layer built, or nothing
        sock = sb.run_in_netns(lambda: socket.create_server(("127.0.0.1", 8080)))
        proc = sb.spawn(["git", "status"], stdin=..., stdout=..., stderr=...)
        proc.wait()
    # torn down: processes, netns + nft table, cgroup, directories, uid reservation

    code = run_command(spec, ["claude"], audit=sink, hooks=proxy_hooks)   # ``corral run``
    validate(spec)     # refuse missing or hidden visible paths before anything is created

Submodules are imported lazily so that ``corral.sandbox.seccomp`` and friends can be used
without loading the launcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.sandbox.audit import AuditSink, NullSink
    from corral.sandbox.launch import Sandbox
    from corral.sandbox.run import RunHooks, run_command
    from corral.sandbox.spec import SandboxSpec
    from corral.sandbox.workspace import validate

__all__ = [
    "AuditSink", "NullSink", "RunHooks", "Sandbox", "SandboxSpec", "run_command", "validate",
]

__getattr__ = lazy_exports("corral.sandbox", {
    "AuditSink": "audit",
    "NullSink": "audit",
    "Sandbox": "launch",
    "SandboxSpec": "spec",
    "RunHooks": "run",
    "run_command": "run",
    "validate": "workspace",
})
