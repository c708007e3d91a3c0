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
    check_host()       # root, tools, kernel features; CorralError naming what is missing
    collect_leftovers()                 # ``corral sandbox gc``: what dead launchers left

Submodules are imported lazily so that ``corral.sandbox.seccomp`` and friends can be used
without loading the launcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral._lazy import lazy_exports

if TYPE_CHECKING:
    from corral.sandbox.audit import AuditSink, NullSink
    from corral.sandbox.enter import enter_command, find_entry, kill
    from corral.sandbox.launch import Sandbox
    from corral.sandbox.preflight import check_host
    from corral.sandbox.pty import Pty
    from corral.sandbox.reclaim import collect_leftovers
    from corral.sandbox.run import RunHooks, Terminated, run_command
    from corral.sandbox.spec import SandboxSpec
    from corral.sandbox.supervise import supervise
    from corral.sandbox.workspace import expand_user, invoking_user, validate

# ``registry`` is exported as a module (``corral sandbox ls`` reads its entries).
__all__ = [
    "AuditSink", "NullSink", "Pty", "RunHooks", "Sandbox", "SandboxSpec", "Terminated",
    "check_host", "collect_leftovers", "enter_command", "expand_user", "find_entry",
    "invoking_user", "kill", "registry", "run_command", "supervise", "validate",
]

__getattr__ = lazy_exports("corral.sandbox", {
    "AuditSink": "audit",
    "NullSink": "audit",
    "Sandbox": "launch",
    "SandboxSpec": "spec",
    "RunHooks": "run",
    "run_command": "run",
    "Terminated": "run",
    "validate": "workspace",
    "expand_user": "workspace",
    "invoking_user": "workspace",
    "check_host": "preflight",
    "collect_leftovers": "reclaim",
    "enter_command": "enter",
    "find_entry": "enter",
    "kill": "enter",
    "Pty": "pty",
    "supervise": "supervise",
})
