"""One egress launcher for both modes: the proxy and DNS stub beside a sandbox (DESIGN steps 2, 4).

``Egress`` resolves the policy's secrets on the host and builds the proxy (ephemeral CA) before
the sandbox exists; ``prepare`` puts the proxy/DNS ports, the agent's proxy and CA variables and
the trust bundle into the spec; once every layer exists ``attach`` creates the listeners inside
the sandbox netns and hands them to the proxy child, which serves as the sandbox's own helper
uid; ``detach`` stops it. The child is forked first thing and makes its CA (the key never
leaves it) while the launcher builds the sandbox. ``EgressHooks`` is the ``RunHooks`` form for
``corral run``; ``proxied_opener`` the opener form for ``corral mcp``'s tools sandboxes.

Invariants:
- The proxy serves before the command starts and before ``open`` returns: no window without
  egress control. A proxy that fails to start aborts the run (the sandbox is torn down).
- The proxy child drops to a uid of its own, reserved from the sandbox uid range in the
  registry (not ``nobody``, which other daemons share, and not the agent's uid, which would let
  the agent signal or ptrace it), before it parses anything; the uid is freed with the sandbox
  at teardown or by ``corral sandbox gc``.
- The secrets never enter the sandbox, only placeholders do; the CA key stays in the proxy.
- A dead proxy means no egress: the netns rules redirect web traffic to its port, reject the rest.
- The proxy child is in the sandbox's cgroup before it serves (its memory, pids and CPU count
  towards the sandbox's limits) and serves with caps derived from the sandbox's memory limit
  (``proxy_caps``): a hostile agent cannot make it grow past them.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.runtime.proxyproc import ProxyProcess
    from corral.sandbox.launch import Sandbox
    from corral.sandbox.spec import SandboxSpec
    from corral.tools.provision import Opened

__all__ = ["BUNDLE", "DNS_PORT", "PROXY_PORT", "Egress", "EgressHooks", "listeners",
           "proxied_opener", "proxy_caps"]

PROXY_PORT = 15001  # inside the sandbox's private netns: no clash with the host or other sandboxes
DNS_PORT = 15053
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

ProxyAudit = Callable[[str], Any]  # sandbox id -> the sink its proxy events go to (or None)


CAP_ENV = {"connections": "CORRAL_PROXY_MAX_CONNECTIONS", "buffered": "CORRAL_PROXY_MAX_BUFFERED"}
_CONN_BUDGET = 128 * 1024  # per connection: a request head (64 KiB) and the objects around it
_DEFAULT_MEMORY = 4 * 1024**3  # for caps when the sandbox has no memory limit


def proxy_caps(memory: int | None) -> dict[str, int]:
    """The proxy's caps for a sandbox limited to ``memory`` bytes: an eighth of it for client
    connections (``_CONN_BUDGET`` each, 32 to 4096) and an eighth for buffered client bytes
    (at least 8 MiB), so a proxy at both caps holds about a quarter of the sandbox's limit
    (512 MiB: 512 connections, 64 MiB). ``CORRAL_PROXY_MAX_CONNECTIONS`` and
    ``CORRAL_PROXY_MAX_BUFFERED`` (a size: ``256MiB``) in the launcher's environment override."""
    import os

    from corral.policy.units import parse_size

    share = (memory or _DEFAULT_MEMORY) // 8
    caps = {"connections": min(4096, max(32, share // _CONN_BUDGET)),
            "buffered": max(8 * 1024**2, share)}
    for key, env in CAP_ENV.items():
        raw = os.environ.get(env)
        if raw:
            try:
                value = int(raw) if key == "connections" else parse_size(raw)
            except ValueError:
                value = None
            if not value or value <= 0:
                from corral.errors import CorralError

                raise CorralError(f"{env}={raw!r}: expected a positive "
                                  f"{'number' if key == 'connections' else 'size (64MiB)'}",
                                  exit_code=125)
            caps[key] = value
    return caps


def listeners() -> list[socket.socket]:
    """Proxy (dual-stack TCP) and DNS stub (UDP, v4 and v6) sockets; call inside the netns."""
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # 127.0.0.1 and ::1 alike
    tcp.bind(("::", PROXY_PORT))
    tcp.listen(128)
    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("127.0.0.1", DNS_PORT))
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    udp6.bind(("::1", DNS_PORT))
    return [tcp, udp4, udp6]


class Egress:
    """The proxy of one sandbox: build, ``prepare`` the spec, ``attach``, ``detach``.

    The proxy child is forked here, before the sandbox exists: it imports the proxy and makes
    the CA while the launcher builds the sandbox (``corral.runtime.proxyproc``).
    """

    def __init__(
        self,
        policy: Any,
        *,
        proxy_audit: ProxyAudit | None = None,
        upstream_proxy: str | None = None,
        resolve_overrides: Mapping[str, list[str]] | None = None,
        configure: bool = True,
        proc: ProxyProcess | None = None,
        spend_server: bool = False,
    ) -> None:
        """Fork the proxy child; ``configure=False`` defers resolving the secrets (``corral
        run`` forks before it opens the audit store, and resolves secrets only after).
        ``proc``: a child forked earlier without a policy (``corral run`` forks it before it
        resolves the policy); it is given ``policy`` now. ``spend_server``: a project run,
        whose budgets are on the server too (``corral run`` knows it only after the fork:
        it sets the attribute before ``configure``)."""
        from corral.runtime.proxyproc import ProxyProcess

        self.policy = policy
        self.spend_server = spend_server
        if proc is None:
            proc = ProxyProcess(policy)  # forked first: its imports overlap ours and the build
        else:
            proc.set_policy(policy)
        self.proc = proc
        self._settings = (upstream_proxy, resolve_overrides)
        if configure:
            self.configure()
        self.proxy_audit = proxy_audit
        self.proxy_uid: int | None = None
        self.failed = False  # the proxy did not come up after ``attach(wait=False)``
        self._detached = False

    def configure(self) -> None:
        """Resolve the policy's secrets on the host and hand them to the proxy child."""
        from corral.credentials import resolve_secrets

        upstream_proxy, resolve_overrides = self._settings
        try:
            self.proc.configure(resolve_secrets(self.policy), upstream_proxy=upstream_proxy,
                                resolve_overrides=resolve_overrides,
                                spend_server=self.spend_server)
        except BaseException:
            self.proc.kill()
            raise

    def prepare(self, spec: SandboxSpec) -> SandboxSpec:
        from corral.proxy.agentenv import agent_env

        return spec._replace(
            proxy_port=PROXY_PORT,
            dns_port=DNS_PORT,
            env={**agent_env(self.policy, PROXY_PORT, bundle_path=BUNDLE), **spec.env},
            # the bundle's content is set by ``attach`` (before any spawn), once the child's CA
            # is there: the sandbox is built meanwhile
            extra_files={**spec.extra_files, BUNDLE: b""},
        )

    def attach(self, sb: Sandbox, *, wait: bool = True) -> None:
        """Start the proxy for ``sb``; returns once it serves (or raises).

        ``wait=False`` returns as soon as the child holds the listeners: they are bound and
        listening inside the netns already, so the agent's first connections wait in their
        backlog until the proxy (privileges dropped) accepts them — egress is never open. A
        watcher stops the sandbox if the proxy then fails to start (``failed``).
        """
        from corral.proxy.agentenv import trust_bundle

        sb.spec = sb.spec._replace(
            extra_files={**sb.spec.extra_files, BUNDLE: trust_bundle(self.proc.ca_pem())})
        uid = sb.reserve_helper_uid()
        self.proxy_uid = uid
        audit = self.proxy_audit(sb.id) if self.proxy_audit is not None else None
        socks: list[socket.socket] = []
        try:
            socks = sb.run_in_netns(listeners)
            self.proc.start(socks[:1], socks[1:], run_as=(uid, uid), audit=audit, wait=wait,
                            adopt=sb.adopt, caps=proxy_caps(sb.spec.limits.memory))
            if not wait:
                threading.Thread(target=self._watch, args=(sb,), daemon=True,
                                 name="corral-proxy-watch").start()
        finally:
            for sock in socks:  # the proxy child holds its own copies
                with contextlib.suppress(OSError):
                    sock.close()

    def _watch(self, sb: Sandbox) -> None:
        if not self.proc.wait_ready() and not self._detached:
            self.failed = True
            sys.stderr.write("corral: the egress proxy failed to start; stopping the sandbox\n")
            sb.kill_all()

    def detach(self) -> None:
        """Stop the proxy (also when it was never attached); idempotent."""
        self._detached = True
        self.proc.stop()


class EgressHooks(Egress):
    """``Egress`` as ``corral.sandbox.RunHooks`` for ``run_command``."""

    def started(self, sb: Sandbox) -> Mapping[str, str]:
        self.proc.ca_pem()  # the child's CA: the command's trust bundle needs it
        sb.warm_cgroup_attach()  # ~10 ms before the spawn: see ``Sandbox.warm_cgroup_attach``
        self.attach(sb, wait=False)  # the command starts while the proxy finishes its setup
        return {}

    def finished(self, sb: Sandbox) -> None:
        self.detach()


def proxied_opener(
    policy: Any,
    *,
    proxy_audit: ProxyAudit | None = None,
    sandbox_audit: Any = None,
    resolve_overrides: Mapping[str, list[str]] | None = None,
    upstream_proxy: str | None = None,
    spend_server: bool = False,
) -> Callable[[Any], Opened]:
    """An opener for ``corral.tools.SandboxProvider``: each call builds sandbox + proxy.
    ``spend_server``: each sandbox is a project run whose metered requests reserve on corral
    server (its run tells the proxy where, ``Opened.egress``); as ``Egress.spend_server``."""

    def open_(spec: Any) -> Opened:
        from corral.sandbox import Sandbox
        from corral.tools.provision import Opened

        egress = Egress(policy, proxy_audit=proxy_audit, upstream_proxy=upstream_proxy,
                        resolve_overrides=resolve_overrides, spend_server=spend_server)
        try:
            sb = Sandbox.open(egress.prepare(spec), sandbox_audit)
        except BaseException:
            egress.detach()
            raise
        try:
            egress.attach(sb)
        except BaseException:
            try:
                egress.detach()
            finally:
                sb.close()
            raise

        def close() -> None:
            try:
                egress.detach()
            finally:
                sb.close()

        return Opened(sb, close, egress)

    return open_
