"""The egress proxy beside a ``corral run`` (DESIGN "How a run flows", steps 2 and 4).

``EgressHooks`` plugs into ``corral.sandbox.run_command``: before the sandbox exists it resolves
the policy's secrets on the host and builds the proxy (ephemeral CA); ``prepare`` puts the
proxy/DNS ports, the agent's proxy and CA variables and the trust bundle into the spec; once
every layer exists ``started`` creates the listeners inside the sandbox netns and starts the
proxy child (which drops to nobody before parsing anything); ``finished`` stops it.

Invariants: the proxy serves before the command starts (no window without egress control); a
proxy that fails to start aborts the run (exit 125); the secrets never enter the sandbox, only
placeholders do. Without egress rules no proxy is started: the sandbox has no egress at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Mapping
from typing import Any

from corral.sandbox.spec import SandboxSpec

__all__ = ["BUNDLE", "DNS_PORT", "NOBODY", "PROXY_PORT", "EgressHooks", "listeners"]

PROXY_PORT = 15001  # inside the sandbox's private netns: no clash with anything on the host
DNS_PORT = 15053
NOBODY = (65534, 65534)
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


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


class EgressHooks:
    def __init__(self, policy: Any, *, audit: Any = None) -> None:
        from corral.credentials.resolve import resolve_secrets
        from corral.proxy.service import ProxyService

        self.service = ProxyService(policy, secrets=resolve_secrets(policy), audit=audit)
        self._handle: Any = None

    def prepare(self, spec: SandboxSpec) -> SandboxSpec:
        return dataclasses.replace(
            spec,
            proxy_port=PROXY_PORT,
            dns_port=DNS_PORT,
            env={**self.service.agent_env(PROXY_PORT, bundle_path=BUNDLE), **spec.env},
            extra_files={**spec.extra_files, BUNDLE: self.service.trust_bundle()},
        )

    def started(self, sb: Any) -> Mapping[str, str]:
        socks: list[socket.socket] = []
        try:
            socks = sb.run_in_netns(listeners)
            self._handle = self.service.start(
                listen_socks=socks[:1], dns_socks=socks[1:], run_as=NOBODY
            )
        finally:
            for sock in socks:  # the proxy child holds its own copies
                with contextlib.suppress(OSError):
                    sock.close()
        return {}

    def finished(self, sb: Any) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.stop()
