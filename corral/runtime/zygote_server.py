"""The zygote process itself (``python -m corral.runtime.zygote``): preload, listen, fork.

See ``corral.runtime.zygote`` for the invariants; this module keeps these:
- The code stamp is taken before anything is imported, so an edit made while the zygote
  preloads makes it stale at its first request.
- It is single-threaded (nothing it preloads starts a thread; no event loop runs here), so
  ``fork`` is safe; the child never returns into the zygote's loop (``os._exit``).
- A peer whose SO_PEERCRED uid is not 0 is closed unanswered; a malformed request is dropped.
- The child's pidfd is opened right after the fork, before the zygote could reap the child.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from corral.runtime.zygote import _CRED, IDLE, PROTOCOL, code_stamp, package_dir, socket_path

__all__ = ["serve_main"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _preload() -> Any:
    """Import what the proxy child needs (it cannot import lazily after its privilege drop)
    and warm what is per machine; returns the upstream TLS contexts (system trust store)."""
    import encodings.idna  # noqa: F401
    import pickle  # noqa: F401
    import resource  # noqa: F401

    import uvloop  # noqa: F401

    import corral.policy.index  # what an unpickled ResolvedPolicy refers to
    import corral.policy.match
    import corral.policy.resolved
    import corral.proxy.service
    import corral.runtime.proxyproc  # noqa: F401
    from corral.proxy.sigv4 import preload
    from corral.proxy.tls import CertificateAuthority, UpstreamContexts

    preload()
    # a throwaway CA and leaf: OpenSSL's lazily fetched algorithms are then warm in children
    CertificateAuthority(["warm.invalid"]).server_context("warm.invalid")
    upstream = UpstreamContexts()
    upstream.preload([])  # the system trust store: ~27 ms per run otherwise
    return upstream


def _listen(path: str) -> tuple[socket.socket, tuple[int, int]]:
    tmp = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.bind(tmp)
    os.chmod(tmp, 0o600)
    sock.listen(64)
    os.rename(tmp, path)  # atomic: a launcher sees the old socket or the new one
    st = os.stat(path)
    return sock, (st.st_dev, st.st_ino)


def _ours(path: str, ident: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


class _Zygote:
    def __init__(self, pkg: str, path: str, lock: int, stamp: int, idle: float,
                 upstream: Any) -> None:
        self.pkg, self.path, self.lock, self.stamp, self.idle = pkg, path, lock, stamp, idle
        self.upstream = upstream
        self.listener: socket.socket | None = None
        self.ident = (0, 0)
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.poll = select.poll()
        self.wake_r, self.wake_w = socket.socketpair()
        self.last = time.monotonic()

    def start(self) -> None:
        self.listener, self.ident = _listen(self.path)
        self.poll.register(self.listener, select.POLLIN)
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno())
        for sig in _SIGNALS:
            signal.signal(sig, lambda *_: None)  # wakes the poll through the wakeup fd
        self.poll.register(self.wake_r, select.POLLIN)

    def drain(self) -> None:
        """Accept nothing more, let a new zygote start; leave once the children are gone."""
        if self.listener is None:
            return
        if _ours(self.path, self.ident):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.poll.unregister(self.listener)
        self.listener.close()
        self.listener = None
        os.close(self.lock)

    def run(self) -> None:
        while self.listener is not None or self.children:
            if self.listener is not None:
                if not self.children and time.monotonic() - self.last >= self.idle:
                    self.drain()
                    continue
                if not _ours(self.path, self.ident):
                    self.drain()
                    continue
            for fd, _ev in self.poll.poll(1000):
                if self.listener is not None and fd == self.listener.fileno():
                    self.accept()
                elif fd == self.wake_r.fileno():
                    with contextlib.suppress(OSError):
                        if self.wake_r.recv(64):
                            self.drain()  # SIGTERM/SIGINT/SIGHUP
                elif fd in self.children:
                    self.reap(fd)

    def reap(self, pidfd: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        self.poll.unregister(pidfd)
        os.close(pidfd)
        del self.children[pidfd]
        self.last = time.monotonic()

    def accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        with conn:
            try:
                conn.settimeout(0.5)
                _pid, uid, _gid = _CRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
                if uid != 0:
                    return
                msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 2,
                                                          socket.MSG_CMSG_CLOEXEC)
                self.last = time.monotonic()
                hs = json.loads(msg)
                if not isinstance(hs, dict) or len(fds) != 2:
                    return
                if hs.get("v") != PROTOCOL or code_stamp(self.pkg) != self.stamp:
                    self.drain()  # before the answer: the launcher may start a new one at once
                    conn.sendall(json.dumps({"error": "stale"}).encode())
                    return
                self.fork(conn, fds, hs)
            except (OSError, ValueError):
                return
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def fork(self, conn: socket.socket, fds: list[int], hs: dict[str, Any]) -> None:
        pid = os.fork()
        if pid == 0:
            self._child(conn, fds, hs)  # never returns
        pidfd = os.pidfd_open(pid)  # before any reap: it names exactly this child
        self.children[pidfd] = pid
        self.poll.register(pidfd, select.POLLIN)
        try:
            socket.send_fds(conn, [json.dumps({"pid": pid}).encode()], [pidfd])
        except OSError:  # the launcher is gone: the child sees EOF on its sockets and exits
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    def _child(self, conn: socket.socket, fds: list[int], hs: dict[str, Any]) -> None:
        status = 70
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            assert self.listener is not None
            self.listener.close()
            os.close(self.lock)
            from corral.runtime.proxyproc import _child

            ctl, life = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
            fds.clear()
            # _child closes every other descriptor (connection, pidfds, wakeup sockets)
            _child(ctl, life, None, setup=lambda: _apply(hs), upstream_tls=self.upstream)
            status = 0
        except BaseException:
            status = 70
        finally:
            # every descriptor closed before the exit (the address space's teardown takes
            # ~2 ms more): the launcher's stop sees its sockets hang up and goes on
            os.closerange(0, 2**31 - 1)
            os._exit(status)


def _apply(hs: dict[str, Any]) -> None:
    """What a locally forked child would have inherited from its launcher."""
    import resource

    from corral.runtime.zygote import PASS_ENV

    env = hs.get("env") or {}
    for key in PASS_ENV:
        os.environ.pop(key, None)
        if isinstance(env.get(key), str):
            os.environ[key] = env[key]
    for name, (soft, hard) in (hs.get("rlimits") or {}).items():
        if name.startswith("RLIMIT_") and hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (int(soft), int(hard)))
    os.umask(int(hs.get("umask", 0o022)) & 0o777)
    os.setpriority(os.PRIO_PROCESS, 0, int(hs.get("nice", 0)))
    if hs.get("oom") is not None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(int(hs["oom"])))
    _join_cgroups(str(hs.get("cgroup", "")))


def _parse_cgroups(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        out[hid] = (ctrls, path)
    return out


def _join_cgroups(launcher: str) -> None:
    """Join the launcher's cgroup in each hierarchy where ours differs (usually none)."""
    with open("/proc/self/cgroup") as f:
        mine = _parse_cgroups(f.read())
    todo = {h: cp for h, cp in _parse_cgroups(launcher).items() if mine.get(h) != cp}
    if not todo:
        return
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3 or fields[3] != "/":
                continue
            if rfields[0] == "cgroup2":
                mounts.setdefault("", fields[4])
            elif rfields[0] == "cgroup":
                opts = set(rfields[2].split(","))
                for ctrls, _ in todo.values():
                    if ctrls and set(ctrls.split(",")) <= opts:
                        mounts.setdefault(ctrls, fields[4])
    for ctrls, path in todo.values():
        if ctrls not in mounts:
            raise OSError(f"cannot join the launcher's cgroup {ctrls}:{path}: not mounted")
        fd = os.open(os.path.join(mounts[ctrls], path.lstrip("/"), "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def serve_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m corral.runtime.zygote")
    p.add_argument("--package", required=True)
    p.add_argument("--lock-fd", type=int)
    p.add_argument("--idle", type=float, default=IDLE)
    p.add_argument("--tag")  # only shown in the command line (``zygote.running``)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("corral zygote: root only", file=sys.stderr)
        return 2
    os.umask(0o077)
    os.chdir("/")
    pkg = package_dir()
    if pkg != os.path.realpath(args.package):
        print(f"corral zygote: imported {pkg}, not {args.package}", file=sys.stderr)
        return 2
    path = socket_path(pkg)
    lock = args.lock_fd
    if lock is None:
        lock = os.open(path[:-5] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another zygote for this key starts or runs
    os.set_inheritable(lock, False)
    stamp = code_stamp(pkg)  # before the imports: an edit meanwhile makes it stale
    gc.disable()
    upstream = _preload()
    gc.freeze()  # the preloaded heap: shared with the children, never scanned again
    gc.enable()
    zygote = _Zygote(pkg, path, lock, stamp, args.idle, upstream)
    zygote.start()
    zygote.run()
    return 0
