"""The proxy as a service the launcher starts: build once, fork, drop privileges, serve.

Invariants:
- The listening sockets are created by the caller (inside the sandbox netns); the proxy child
  only accepts on them. The child keeps no other inherited file descriptor.
- Before serving, the child drops to ``run_as`` (supplementary groups cleared, gid then uid,
  no_new_privs, not dumpable so its memory and fds are not readable by other processes): it
  parses hostile input and must not be root. Files it needs as root (``tls_ca``) are loaded
  before the drop.
- The child exits when the launcher goes away (the relay socket reaches EOF): a proxy never
  outlives the launcher that audits it; a dead proxy means no egress, never open egress.
- ``start`` returns only once the child is serving (or raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from corral.errors import CorralError
from corral.proxy.agentenv import SYSTEM_BUNDLE, agent_env, trust_bundle
from corral.proxy.context import ProxyContext
from corral.proxy.dns import serve_dns
from corral.proxy.events import AsyncAudit, AuditSink, DirectAudit, RelayAudit, start_relay
from corral.proxy.resolve import Resolver
from corral.proxy.server import serve
from corral.proxy.tls import CertificateAuthority, UpstreamContexts
from corral.proxy.upstream import UpstreamProxy

__all__ = ["ProxyHandle", "ProxyService", "drop_privileges", "inspected_hosts"]

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


def inspected_hosts(policy: Any) -> list[str]:
    """Hosts of inspect rules, for the CA's name constraints; ``["*"]`` if unknown."""
    rules = getattr(policy, "rules", None)
    if rules is None:
        return ["*"]
    try:
        return [r.host for r in rules if r.action == "inspect"] or ["invalid.corral"]
    except Exception:
        return ["*"]


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    if os.getresuid() != (uid, uid, uid) or os.getgroups():
        raise OSError("privilege drop did not take effect")


def _normalise_secrets(
    secrets: Mapping[str, str | Mapping[str, str]],
) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in secrets.items():
        out[name] = {"secret": value} if isinstance(value, str) else dict(value)
    return out


class ProxyHandle:
    def __init__(self, pid: int, lifeline: socket.socket, relay: Any = None) -> None:
        self.pid = pid
        self._lifeline = lifeline
        self._relay = relay
        self._stopped = False

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            time.sleep(0.01)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if self._relay is not None:
            self._relay.close()  # the child is gone: the relay's thread ends
        self._lifeline.close()


class ProxyService:
    def __init__(
        self,
        policy: Any,
        secrets: Mapping[str, str | Mapping[str, str]] | None = None,
        audit: AuditSink | None = None,
        upstream_proxy: str | None = None,
        resolve_overrides: Mapping[str, list[str]] | None = None,
        idle_timeout: float = 300.0,
        ca: CertificateAuthority | None = None,
        upstream_tls: UpstreamContexts | None = None,
    ) -> None:
        self.policy = policy
        self.secrets = _normalise_secrets(secrets or {})
        self.audit = audit
        try:
            self.upstream_proxy = UpstreamProxy.parse(upstream_proxy) if upstream_proxy else None
        except ValueError as err:
            raise CorralError(f"--upstream-proxy: {err}") from None
        self.resolve_overrides = dict(resolve_overrides or {})
        self.idle_timeout = idle_timeout
        self.ca = ca if ca is not None else CertificateAuthority(inspected_hosts(policy))
        # prebuilt contexts (the zygote's system trust store), else built per serve
        self.upstream_tls = upstream_tls

    # -- what the sandbox gets ----------------------------------------------------------

    def agent_env(
        self,
        proxy_port: int,
        proxy_host: str = "127.0.0.1",
        bundle_path: str = SYSTEM_BUNDLE,
    ) -> dict[str, str]:
        return agent_env(self.policy, proxy_port, proxy_host, bundle_path)

    def trust_bundle(self) -> bytes:
        return trust_bundle(self.ca.cert_pem)

    # -- serving ------------------------------------------------------------------------

    def _context(self, audit: AsyncAudit) -> ProxyContext:
        upstream_tls = self.upstream_tls if self.upstream_tls is not None else UpstreamContexts()
        rules = getattr(self.policy, "rules", None) or []
        upstream_tls.preload(getattr(r, "tls_ca", None) for r in rules)
        return ProxyContext(
            policy=self.policy,
            ca=self.ca,
            secrets=self.secrets,
            audit=audit,
            resolver=Resolver(self.resolve_overrides),
            upstream_tls=upstream_tls,
            upstream_proxy=self.upstream_proxy,
            idle_timeout=self.idle_timeout,
        )

    async def serve(
        self,
        listen_socks: Iterable[socket.socket],
        dns_socks: Iterable[socket.socket] = (),
        stop: asyncio.Event | None = None,
        audit: AsyncAudit | None = None,
        ready: threading.Event | None = None,
    ) -> None:
        """Serve in the current event loop until ``stop`` is set (in-process use)."""
        if audit is None:
            audit = DirectAudit(self.audit) if self.audit is not None else AsyncAudit()
        ctx = self._context(audit)
        servers = await serve(ctx, list(listen_socks))
        transports = await serve_dns(ctx, list(dns_socks))
        if ready is not None:
            ready.set()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            for server in servers:
                server.close()
            for transport in transports:
                transport.close()

    def start(
        self,
        listen_socks: Iterable[socket.socket],
        dns_socks: Iterable[socket.socket] = (),
        run_as: tuple[int, int] | None = None,
        ready_timeout: float = 10.0,
    ) -> ProxyHandle:
        """Fork the proxy child, drop it to ``run_as`` and return once it serves."""
        listen = list(listen_socks)
        dns_list = list(dns_socks)
        ours, theirs = socket.socketpair()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            status = 70
            try:
                ours.close()
                os.close(ready_r)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                keep = {0, 1, 2, theirs.fileno(), ready_w}
                keep |= {s.fileno() for s in listen + dns_list}
                _close_other_fds(keep)
                with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                    runner.run(self._child(listen, dns_list, theirs, ready_w, run_as))
                status = 0
            except BaseException:
                status = 70
            finally:
                os._exit(status)
        theirs.close()
        os.close(ready_w)
        relay = start_relay(ours, self.audit) if self.audit is not None else None
        handle = ProxyHandle(pid, ours, relay)
        readable, _, _ = select.select([ready_r], [], [], ready_timeout)
        ok = bool(readable) and os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        if not ok:
            handle.stop()
            raise CorralError("the egress proxy failed to start")
        return handle

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
        run_as: tuple[int, int] | None,
    ) -> None:
        """Run the proxy child's body in this (already forked) process: relay or lifeline on
        ``lifeline``, drop to ``run_as`` before serving, write ``b"1"`` to ``ready_w`` once it
        serves, return when stopped (SIGTERM) or when the launcher is gone."""
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._child(listen, dns_socks, lifeline, ready_w, run_as))

    async def _child(
        self,
        listen: list[socket.socket],
        dns_socks: list[socket.socket],
        lifeline: socket.socket,
        ready_w: int,
        run_as: tuple[int, int] | None,
    ) -> None:
        audit: AsyncAudit
        if self.audit is not None:
            relay = RelayAudit(lifeline)
            await relay.open()
            audit = relay
            gone = relay.closed
        else:
            audit = AsyncAudit()
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
        if run_as is not None:
            self._preload()
            drop_privileges(*run_as)
        servers = await serve(ctx, listen)
        transports = await serve_dns(ctx, dns_socks)
        os.write(ready_w, b"1")
        os.close(ready_w)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gone.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            server.close()
        for transport in transports:
            transport.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (several times faster on the proxy's hot path), else asyncio's."""
    if os.environ.get("CORRAL_PROXY_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _close_other_fds(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)
