"""Open a tools sandbox with the egress proxy and DNS stub wired in (DESIGN layers 2 and 3).

This is the Mode 1 launcher: the same pieces ``corral run`` uses (``Sandbox`` with
``proxy_port``/``dns_port``, ``ProxyService`` listening on sockets created inside the sandbox
netns, credentials resolved on the host), assembled for a long-lived tools sandbox. When the
shared launcher for ``corral run`` exists, ``corral mcp`` can pass that one as its opener.

Invariants:
- The proxy's listeners are created inside the sandbox's network namespace before anything
  runs there, and the proxy serves before ``open`` returns: no window without egress control.
- The proxy child drops to an unprivileged uid before it parses anything (``run_as``).
- The agent gets proxy variables, the CA trust variables and the trust bundle (system roots +
  the sandbox's ephemeral CA) at the system bundle path; never a secret: those stay in the
  proxy, which injects them.
- ``close`` stops the proxy and closes the sandbox; a dead proxy means no egress (the netns
  rules redirect web traffic to its port and reject the rest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Callable, Mapping
from typing import Any

from corral.tools.provision import Opened

__all__ = ["DNS_PORT", "NOBODY", "PROXY_PORT", "proxied_opener"]

PROXY_PORT = 15001  # inside the sandbox's private netns: no clash with the host or other sandboxes
DNS_PORT = 15053
NOBODY = (65534, 65534)
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _listeners() -> list[socket.socket]:
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


def proxied_opener(
    policy: Any,
    *,
    audit: Any = None,
    sandbox_audit: Any = None,
    resolve_overrides: Mapping[str, list[str]] | None = None,
    upstream_proxy: str | None = None,
    run_as: tuple[int, int] = NOBODY,
) -> Callable[[Any], Opened]:
    """An opener for ``SandboxProvider``: each call builds sandbox + proxy for ``policy``."""

    def open_(spec: Any) -> Opened:
        from corral.credentials.resolve import resolve_secrets
        from corral.proxy.service import ProxyService
        from corral.sandbox import Sandbox

        service = ProxyService(policy, secrets=resolve_secrets(policy), audit=audit,
                               upstream_proxy=upstream_proxy,
                               resolve_overrides=dict(resolve_overrides or {}))
        spec = dataclasses.replace(
            spec, proxy_port=PROXY_PORT, dns_port=DNS_PORT,
            env={**spec.env, **service.agent_env(PROXY_PORT, bundle_path=BUNDLE)},
            extra_files={**spec.extra_files, BUNDLE: service.trust_bundle()},
        )
        sb = Sandbox.open(spec, sandbox_audit)
        socks: list[socket.socket] = []
        try:
            socks = sb.run_in_netns(_listeners)
            handle = service.start(listen_socks=socks[:1], dns_socks=socks[1:], run_as=run_as)
        except BaseException:
            sb.close()
            raise
        finally:
            for sock in socks:  # the proxy child holds its own copies
                with contextlib.suppress(OSError):
                    sock.close()

        def close() -> None:
            try:
                handle.stop()
            finally:
                sb.close()

        return Opened(sb, close)

    return open_
