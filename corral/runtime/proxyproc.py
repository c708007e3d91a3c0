"""The one way a proxy starts: its child, forked early, imports the proxy and makes the CA
while the launcher builds the sandbox (the launch path imports only what it needs). ``corral
run``, ``corral mcp``, the proxy tests and the proxy benchmark all start it here.

Sequence::

    proc = ProxyProcess(policy)  # fork (or ProxyProcess() before the policy is resolved,
                                 # then proc.set_policy(policy): its imports start even sooner)
    proc.configure(secrets, upstream_proxy=..., resolve_overrides=...)
    pem = proc.ca_pem()        # the child's CA certificate (never its key)
    ... build the sandbox, create the listeners inside its netns ...
    proc.start(listen, dns, run_as=(uid, uid), audit=trail)   # returns once serving
    proc.stop()

``audit``: the sandbox's ``Trail`` (or any sink with ``emit(type, **fields)``), served to the
child through ``corral.audit.AuditRelay`` on the lifeline socket.

The child is forked by the pre-started helper (``corral.runtime.zygote``: its imports are done,
so the per-run CPU is a fork and the CA) when one answers, else here; the protocol with the
child is the same. ``CORRAL_PROXY_ZYGOTE=0`` always forks here. A zygote's child is signalled
and awaited through its pidfd (it is not our child), never by pid.

Invariants:
- The CA private key is generated in the child and never leaves it; the launcher receives only
  the certificate (PEM) over the control socket.
- Until ``start`` the child reads only the launcher's control messages (trusted). Before it
  parses anything from the sandbox it drops to ``run_as`` (groups cleared, no_new_privs, not
  dumpable) — ``ProxyService.serve_child``. The listeners are created by the launcher inside
  the sandbox netns and passed to the child (SCM_RIGHTS).
- The child exits when the launcher goes away (its control or lifeline socket reaches EOF),
  so a proxy never outlives its launcher; a dead proxy means no egress.
- The child keeps no other inherited descriptor.
- Before the child is handed its listeners it is moved into the sandbox's cgroup (``start``'s
  ``adopt``): the memory, pids and CPU it spends on the sandbox's clients count towards the
  sandbox's limits, whoever forked it (the zygote's children start in the launcher's group).
  Its connection and buffer caps come in the same message, before it serves.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from corral._frames import HEADER, recv_frame, send_frame
from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.runtime.zygote import Pending

__all__ = ["ProxyProcess"]

_MAX_FDS = 8


class ProxyProcess:
    def __init__(self, policy: Any = None, *, timeout: float = 10.0,
                 zygote: bool | None = None) -> None:
        """Fork the child now; it makes the CA, then waits for ``configure`` and ``start``.

        Without ``policy`` the child imports what it needs and then waits for ``set_policy``
        before it makes the CA; ``kill`` it if no proxy is needed after all. ``zygote``: ask
        the pre-started helper (``corral.runtime.zygote``) for the child; by default when root
        and ``CORRAL_PROXY_ZYGOTE`` is not ``0``. Without an answer the child is forked here.
        """
        self.timeout = timeout
        self._serving = threading.Event()  # the child said it serves (``wait_ready``)
        self._pem: bytes | None = None
        self._relay: Any = None
        self._started = self._stopped = False
        self._pidfd: int | None = None  # set when the zygote forked the child
        self._pending: Pending | None = None  # the zygote's answer, collected by ``_settle``
        self.pid = 0
        if zygote is None:
            zygote = os.environ.get("CORRAL_PROXY_ZYGOTE") != "0" and os.geteuid() == 0
        if not (zygote and self._ask_zygote()):
            self._fork(policy)
        elif policy is not None:
            self.set_policy(policy)

    def _fork(self, policy: Any) -> None:
        self._ctl, ctl_child = socket.socketpair()
        self._life, life_child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # child: never returns
            status = 70
            try:
                self._ctl.close()
                self._life.close()
                _child(ctl_child, life_child, policy)
                status = 0
            except BaseException:
                status = 70
            finally:
                os._exit(status)
        self.pid = pid
        ctl_child.close()
        life_child.close()

    def _ask_zygote(self) -> bool:
        """Send the zygote the child ends of our sockets; its answer is read by ``_settle``
        (the launcher resolves the policy while the zygote forks)."""
        from corral.runtime.zygote import request

        ctl, ctl_child = socket.socketpair()
        life, life_child = socket.socketpair()
        try:
            pending = request(ctl_child, life_child)
        finally:
            ctl_child.close()  # the zygote holds its own copies
            life_child.close()
        if pending is None:
            ctl.close()
            life.close()
            return False
        self._ctl, self._life, self._pending = ctl, life, pending
        return True

    def _settle(self) -> None:
        """Collect the zygote's answer (first thing in every other method); without a child
        from it, fork locally with fresh sockets: a late child of the zygote sees EOF on the
        old ones and exits."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        forked = pending.result()
        if forked is not None:
            self.pid, self._pidfd = forked
            return
        self._ctl.close()
        self._life.close()
        self._fork(None)  # nothing was sent yet: ``set_policy`` follows

    def set_policy(self, policy: Any) -> None:
        """The resolved policy, for a child forked without one (pickled: launcher to child)."""
        import pickle

        self._settle()
        try:
            send_frame(self._ctl, pickle.dumps(policy, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as err:
            self.kill()
            raise CorralError(f"the egress proxy failed to start: {err}") from None

    def configure(self, secrets: Mapping[str, Any], *, upstream_proxy: str | None = None,
                  resolve_overrides: Mapping[str, list[str]] | None = None,
                  idle_timeout: float | None = None, spend_server: bool = False) -> None:
        """Send the resolved secrets and settings (JSON over the private control socket).
        ``idle_timeout``: seconds an agent connection may stay silent (default 300).
        ``spend_server``: a project run, whose metered requests reserve on corral server
        (its address comes later, with ``send_relay``)."""
        self._settle()
        msg = json.dumps({"secrets": dict(secrets), "upstream_proxy": upstream_proxy,
                          "overrides": dict(resolve_overrides or {}),
                          "idle_timeout": idle_timeout,
                          "spend_server": spend_server}).encode()
        try:
            send_frame(self._ctl, msg)
        except OSError as err:
            self.kill()
            raise CorralError(f"the egress proxy failed to start: {err}") from None

    def _read_frame(self) -> bytes:
        ready, _, _ = select.select([self._ctl], [], [], self.timeout)
        if not ready:
            raise CorralError("the egress proxy did not start in time")
        return recv_frame(self._ctl)

    def ca_pem(self) -> bytes:
        """The sandbox CA's certificate, once the child made it (an error line if it failed)."""
        self._settle()
        if self._pem is None:
            try:
                frame = self._read_frame()
            except (EOFError, OSError):
                self.kill()
                raise CorralError("the egress proxy failed to start (no CA)") from None
            if not frame.startswith(b"-----BEGIN CERTIFICATE-----"):
                self.kill()
                raise CorralError(f"the egress proxy failed to start: {frame.decode()[:200]}")
            self._pem = frame
        return self._pem

    def start(self, listen: list[socket.socket], dns: list[socket.socket],
              run_as: tuple[int, int], audit: Any = None, *, wait: bool = True,
              adopt: Callable[[int], None] | None = None,
              caps: Mapping[str, int] | None = None) -> Any:
        """Hand the listeners to the child; returns (``self``) once the proxy serves
        (``wait=False``: at once; call ``wait_ready`` later). ``adopt(pid)`` moves the child
        into the sandbox's cgroup before it gets a listener (so everything it allocates for
        the sandbox's clients is charged to the sandbox); ``caps``: ``connections`` and
        ``buffered`` for ``corral.proxy.server.configure``."""
        from corral.audit.relay import PROXY_EVENTS, AuditRelay  # not the proxy: ~100 ms

        self._settle()
        self.ca_pem()  # the child's first frame: read before its ready byte
        socks = [*listen, *dns]
        if len(socks) > _MAX_FDS:
            raise ValueError("too many listeners")
        msg = json.dumps({"uid": run_as[0], "gid": run_as[1], "listen": len(listen),
                          "audit": audit is not None, "caps": dict(caps or {})}).encode()
        try:
            if adopt is not None:
                adopt(self.pid)  # still root, waiting for this message: nothing served yet
            socket.send_fds(self._ctl, [HEADER.pack(len(msg)) + msg], [s.fileno() for s in socks])
        except (OSError, CorralError) as err:
            self.kill()
            raise CorralError(f"the egress proxy failed to start: {err}") from None
        # the one relay: bound to this sandbox's trail and to the proxy's event types
        self._relay = AuditRelay(audit, self._life, allowed=PROXY_EVENTS) if audit else None
        self._started = True
        if wait and not self.wait_ready():
            self.stop()
            raise CorralError("the egress proxy failed to start")
        return self

    def wait_ready(self) -> bool:
        """Whether the child reported that it serves (False: it failed, or was stopped)."""
        try:
            ready, _, _ = select.select([self._ctl], [], [], self.timeout)
            served = bool(ready) and self._ctl.recv(1) == b"1"
        except (OSError, ValueError):
            return False
        if served:
            self._serving.set()
        return served

    def send_relay(self, info: Mapping[str, Any]) -> None:
        """Tell a serving child where its ``platform`` requests go (the run's relay URL, run
        and sandbox token) or why they cannot go anywhere (``{"unavailable": why}``). Sent
        from a thread once the child said it serves: before that the control socket still
        carries its start-up messages."""
        body = json.dumps(dict(info)).encode()

        def send() -> None:
            if self._serving.wait(60):
                with contextlib.suppress(OSError):
                    send_frame(self._ctl, body)

        threading.Thread(target=send, daemon=True, name="corral-relay-info").start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child: SIGTERM (it closes its listeners), SIGKILL after ``timeout``;
        idempotent."""
        if self._stopped:
            return
        self._settle()
        self._stopped = True
        if self._pidfd is not None:  # the zygote's child: signalled and awaited by pidfd
            pidfd = self._pidfd
            done = False
            if self._started:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                done = _wait_done(pidfd, self._ctl, timeout)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not done:  # readable once it exited (the zygote reaps it)
                select.select([pidfd], [], [], timeout)
            os.close(pidfd)
        elif self.pid > 0:  # never 0: os.kill(0, ...) would signal our process group
            if self._started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                _wait_exit(self.pid, timeout)  # woken by its exit, not by a polling interval
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        if self._relay is not None:
            self._relay.close()  # the child is gone: the relay's thread ends
        for sock in (self._ctl, self._life):
            with contextlib.suppress(OSError):
                sock.close()

    def kill(self) -> None:
        self._started = False
        self.stop()


def _wait_done(pidfd: int, ctl: socket.socket, timeout: float) -> bool:
    """Wait for a zygote's child to exit or to hang up ``ctl``: it closes every descriptor
    (listeners included) right before ``os._exit``, so it can do nothing more, and the
    teardown of its address space need not be awaited. Polled, not read: the watcher thread
    or ``wait_ready`` may be reading ``ctl``."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(ctl, select.POLLRDHUP)
    try:
        return bool(poller.poll(timeout * 1000))
    except (OSError, ValueError):
        return False


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait up to ``timeout`` for child ``pid`` to exit (it stays a zombie until reaped)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # already reaped
        return
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)


def _child(ctl: socket.socket, life: socket.socket, policy: Any, *,
           setup: Callable[[], None] | None = None, upstream_tls: Any = None) -> None:
    """The child's body (forked here or by the zygote). ``setup``: applied first, once only
    ``ctl`` and ``life`` are open (the zygote's: what the launcher's fork would have given);
    ``upstream_tls``: prebuilt upstream TLS contexts (the zygote's system trust store)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when the proxy stops
    # No collections while it imports (its CPU competes with the launcher's on small machines);
    # what the launcher left is frozen, never scanned again. Re-enabled before it serves.
    gc.disable()
    gc.freeze()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    _close_other_fds({0, 1, 2, ctl.fileno(), life.fileno()})
    try:
        if setup is not None:
            setup()
        from corral.proxy.service import inspected_hosts
        from corral.proxy.tls import CertificateAuthority

        if policy is None:  # forked before the launcher resolved it: now it comes
            import pickle

            try:
                # trusted: the launcher's own resolved policy on our private socketpair
                policy = pickle.loads(recv_frame(ctl))
            except EOFError:
                return  # no proxy needed after all (or the launcher is gone)
        ca = CertificateAuthority(inspected_hosts(policy))
        send_frame(ctl, ca.cert_pem)  # first, so the launcher can build the sandbox meanwhile
        from corral.proxy.service import ProxyService
    except Exception as err:
        with contextlib.suppress(OSError):
            send_frame(ctl, f"{type(err).__name__}: {err}".encode())
        raise
    try:
        conf = json.loads(recv_frame(ctl))  # secrets and settings, from the launcher
    except EOFError:
        return  # the launcher is gone before configuring us
    service = ProxyService(policy, secrets=conf["secrets"], upstream_proxy=conf["upstream_proxy"],
                           resolve_overrides=conf["overrides"], ca=ca,
                           upstream_tls=upstream_tls,
                           idle_timeout=float(conf.get("idle_timeout") or 300.0),
                           spend_server=bool(conf.get("spend_server")))
    gc.freeze()  # the imported modules: long-lived, not worth scanning
    gc.enable()
    head, received = b"", []
    while len(head) < 4:  # the launcher's go: listeners, uid, audit on/off
        data, fds, _flags, _addr = socket.recv_fds(ctl, 4096, _MAX_FDS)
        if not data:
            return  # the launcher is gone before starting us
        head += data
        received += fds
    (n,) = HEADER.unpack(head[:4])
    body = head[4:]
    while len(body) < n:
        more = ctl.recv(n - len(body))
        if not more:
            return
        body += more
    cfg = json.loads(body)
    socks = [socket.socket(fileno=fd) for fd in received]
    listen, dns = socks[: cfg["listen"]], socks[cfg["listen"]:]
    service.audited = bool(cfg["audit"])  # events go through the relay on ``life``
    service.caps = dict(cfg.get("caps") or {})
    # serve_child writes b"1" on ``ready_w`` once serving: here, straight to the launcher
    service.serve_child(listen, dns, life, os.dup(ctl.fileno()),
                        (int(cfg["uid"]), int(cfg["gid"])))


def _close_other_fds(keep: set[int]) -> None:
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)
