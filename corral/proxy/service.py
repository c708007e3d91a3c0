"""The proxy child's body: build the context, drop privileges, serve until told to stop.

The one way a proxy starts is ``corral.runtime.proxyproc.ProxyProcess`` (launcher side; it
forks the child, maybe through the pre-started helper, and calls ``ProxyService.serve_child``
in it). Tests and benchmarks start it the same way.

Invariants:
- The listening sockets are created by the caller (inside the sandbox netns); the proxy child
  only accepts on them.
- Before serving, the child drops to ``run_as`` (``drop_privileges``: securebits locked,
  capability bounding and ambient sets emptied, supplementary groups cleared, gid then uid,
  no_new_privs, not dumpable so its memory and fds are not readable by other processes; the
  result verified): it parses hostile input and must not be root. Files it needs as root
  (``tls_ca``) are loaded before the drop.
- The child exits when the launcher goes away (the relay or lifeline socket reaches EOF): a
  proxy never outlives the launcher that audits it; a dead proxy means no egress.
- ``b"1"`` is written to ``ready_w`` only once every listener is served.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

from corral import dirs
from corral.errors import CorralError
from corral.proxy.audit import NullAudit, RelayAudit
from corral.proxy.context import ProxyContext
from corral.proxy.dns import serve_dns
from corral.proxy.lookup import Resolver
from corral.proxy.server import configure, serve
from corral.proxy.tls import CertificateAuthority, UpstreamContexts
from corral.proxy.upstream import UpstreamProxy

__all__ = ["ProxyService", "drop_privileges", "inspected_hosts"]

PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# noroot, noroot locked, no_setuid_fixup locked, keep_caps locked, no_cap_ambient_raise (+locked)
SECUREBITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80


def inspected_hosts(policy: Any) -> list[str]:
    """Hosts of inspect and platform rules (TLS terminated here), for the CA's name
    constraints; ``["*"]`` if unknown."""
    rules = getattr(policy, "rules", None)
    if rules is None:
        return ["*"]
    try:
        return [r.host for r in rules if r.action in ("inspect", "platform")] or [
            "invalid.corral"]
    except Exception:
        return ["*"]


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
        return int(f.read())


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good, as strongly as the sandbox shim drops the agent's."""
    if os.geteuid() == 0:
        _prctl(PR_SET_SECUREBITS, SECUREBITS)
        for cap in range(_last_cap() + 1):
            _prctl(PR_CAPBSET_DROP, cap)
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    with open("/proc/self/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    caps = [status.get(k, "").strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
    if (os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid)
            or os.getgroups() or any(c.strip("0") for c in caps)):
        raise OSError("privilege drop did not take effect")


def _normalise_secrets(
    secrets: Mapping[str, str | Mapping[str, str]],
) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in secrets.items():
        out[name] = {"secret": value} if isinstance(value, str) else dict(value)
    return out


class ProxyService:
    """What the child serves: the policy, the secrets, the settings and the CA."""

    def __init__(
        self,
        policy: Any,
        secrets: Mapping[str, str | Mapping[str, str]] | None = None,
        *,
        audited: bool = False,
        upstream_proxy: str | None = None,
        resolve_overrides: Mapping[str, list[str]] | None = None,
        idle_timeout: float = 300.0,
        ca: CertificateAuthority | None = None,
        upstream_tls: UpstreamContexts | None = None,
        spend_server: bool = False,
    ) -> None:
        self.policy = policy
        self.spend_server = spend_server  # a project run: budgets also on corral server
        self.secrets = _normalise_secrets(secrets or {})
        self.audited = audited  # events go to the launcher's relay on the lifeline socket
        self.caps: dict[str, int] = {}  # ``connections``, ``buffered``: see server.configure
        try:
            self.upstream_proxy = UpstreamProxy.parse(upstream_proxy) if upstream_proxy else None
        except ValueError as err:
            raise CorralError(f"--upstream-proxy: {err}") from None
        self.resolve_overrides = dict(resolve_overrides or {})
        self.idle_timeout = idle_timeout
        self.ca = ca if ca is not None else CertificateAuthority(inspected_hosts(policy))
        # prebuilt contexts (the zygote's system trust store), else built per serve
        self.upstream_tls = upstream_tls

    def _context(self, audit: NullAudit) -> ProxyContext:
        upstream_tls = self.upstream_tls if self.upstream_tls is not None else UpstreamContexts()
        rules = getattr(self.policy, "rules", None) or []
        upstream_tls.preload(getattr(r, "tls_ca", None) for r in rules)
        spend = None
        if any(getattr(r, "meter", None) for r in rules):  # imported before the privilege drop
            from corral.proxy.metered import build_spend

            prices = dirs.config_dir() / "prices.yaml"  # root's configuration, never a policy's
            spend = build_spend(self.policy, prices if prices.is_file() else None,
                                server=self.spend_server)
        platform = None
        if any(getattr(r, "action", None) == "platform" for r in rules):
            from corral.proxy.platform import PlatformRelay  # before the privilege drop

            platform = PlatformRelay()
        return ProxyContext(
            platform=platform,
            spend=spend,
            policy=self.policy,
            ca=self.ca,
            secrets=self.secrets,
            audit=audit,
            resolver=Resolver(self.resolve_overrides),
            upstream_tls=upstream_tls,
            upstream_proxy=self.upstream_proxy,
            idle_timeout=self.idle_timeout,
        )

    def _preload(self) -> None:
        """Import, while still privileged, what the child may need after the drop: the
        unprivileged uid may not be able to read the interpreter's files (a Python under a
        0700 home), so a lazy import after the drop would fail on first use."""
        import encodings.idna  # noqa: F401  (IDNA host names in requests)

        if any(b.kind == "aws" for b in self.policy.credentials.values()):
            from corral.proxy.sigv4 import preload

            preload()

    def serve_child(
        self,
        listen: list[socket.socket],
        dns_socks: list[socket.socket],
        lifeline: socket.socket,
        ready_w: int,
        run_as: tuple[int, int],
    ) -> None:
        """Run the proxy child's body in this (already forked) process: relay or lifeline on
        ``lifeline``, drop to ``run_as`` before serving, write ``b"1"`` to ``ready_w`` once it
        serves, return when stopped (SIGTERM) or when the launcher is gone."""
        if self.caps:
            configure(**self.caps)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._child(listen, dns_socks, lifeline, ready_w, run_as))

    async def _child(
        self,
        listen: list[socket.socket],
        dns_socks: list[socket.socket],
        lifeline: socket.socket,
        ready_w: int,
        run_as: tuple[int, int],
    ) -> None:
        audit: NullAudit
        if self.audited:
            relay = RelayAudit(lifeline)
            await relay.open()
            audit = relay
            gone = relay.closed
        else:
            audit = NullAudit()
            gone = asyncio.Event()
            reader, _writer = await asyncio.open_connection(sock=lifeline)

            async def watch() -> None:
                await reader.read()
                gone.set()

            asyncio.get_running_loop().create_task(watch())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        ctx = self._context(audit)  # loads tls_ca files while still privileged
        self._preload()
        drop_privileges(*run_as)
        servers = await serve(ctx, listen)
        transports = await serve_dns(ctx, dns_socks)
        os.write(ready_w, b"1")
        # The run's server (relay, budgets) and sandbox token come after this, once it registered.
        told = [t for t in (ctx.platform, getattr(ctx.spend, "ledger", None))
                if hasattr(t, "configure")]
        if told:
            control = loop.create_task(_relay_control(told, ready_w))
            if ctx.platform is not None:
                ctx.platform.control = control
        else:
            os.close(ready_w)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gone.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.close()
        for transport in transports:
            transport.close()


async def _relay_control(told: list[Any], fd: int) -> None:
    """Frames from the launcher on the control socket: the run's relay and server
    (``configure`` of the platform relay and of a project run's budget ledger)."""
    import json

    reader, _writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(4), "big")
            info = json.loads(await reader.readexactly(size))
            for target in told:
                target.configure(info)
    except (asyncio.IncompleteReadError, OSError, ValueError):
        return  # the launcher is gone (or spoke nonsense): platform requests keep failing


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (several times faster on the proxy's hot path), else asyncio's."""
    if os.environ.get("CORRAL_PROXY_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
