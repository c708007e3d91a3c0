"""The pre-started proxy helper ("zygote"): forks one proxy child per run, its imports done.

A proxy child forked by the launcher spends ~250 ms of CPU importing cryptography, the proxy,
dnspython and building its TLS contexts, on the same CPUs as the launcher. The zygote is a
root-only process that has done all of that once; ``ProxyProcess`` asks it for a child
(``request``), and from then on speaks the unchanged child protocol of
``corral.runtime.proxyproc`` with it. Started as ``python -m corral.runtime.zygote`` by the
first launcher that finds none (``spawn``), in a new session, stdin/stdout/stderr on
/dev/null, every other descriptor closed (a harness capturing output never waits on it), in a
minimal environment, cwd ``/``.

Opt-out: ``CORRAL_PROXY_ZYGOTE=0`` in the launcher's environment forks the child locally, as
before. A launcher that is not root does the same.

Invariants:
- One zygote per (interpreter, corral package directory, PYTHONPATH and the TLS/OpenSSL
  variables that shape what it preloads, namespaces): all of them key the socket name
  (``/run/corral/zygote-<key>.sock``, dir 0700 root, socket 0600), so two checkouts, two
  venvs or two mount/pid/net/cgroup namespaces never share a zygote. Launcher and zygote both
  check that the peer is root (SO_PEERCRED); anyone else is closed at once.
- No old code serves: the zygote records a stamp of its code (the paths and latest ctime of
  ``corral/**/*.py``, plus the interpreter, site-packages and the trust store) before it
  imports, compares it on every request, and on a change answers
  "stale" and leaves; the launcher then forks locally and starts a fresh zygote.
- At most one zygote per key starts or runs: it holds an flock on its lock file for its whole
  life, taken by the launcher that spawns it (``LOCK_NB``: 30 concurrent launchers start one).
- The zygote holds no secret and no CA key: both are made or received in the child after the
  fork. The child closes the zygote's socket, lock and every other descriptor, restores the
  default signal dispositions, then runs the same ``_child`` as a locally forked one: it drops
  to its helper uid (no_new_privs) before it reads anything from the sandbox, and exits when
  its launcher's control or lifeline socket reaches EOF (no proxy outlives its launcher, even
  though it is not the launcher's child).
- What a local child inherited from the launcher is carried in the handshake and applied in
  the child: rlimits, umask, nice, oom_score_adj, the cgroups (it joins the launcher's, so
  the launcher's accounting and limits cover it as before) and the few variables the proxy
  reads (``CORRAL_PROXY_LOOP``, the resolver's). The cwd is ``/`` (policy paths are absolute).
- The launcher signals and waits through the child's pidfd (opened by the zygote before it
  could reap the child, sent with the reply), never by pid; a stopping child closes every
  descriptor before ``os._exit``, and that hang-up ends the launcher's wait. The zygote reaps
  its children (pidfds in its poll loop): no zombies; on leaving it first drains them.
- The request is sent at once and its answer read when the launcher next talks to the child
  (``ProxyProcess._settle``), so the zygote's stamp check and fork overlap the launcher's
  policy resolution; no answer within ``REPLY_TIMEOUT`` (1 s) means a local fork.
- It leaves when idle (no request and no live child for ``--idle`` s, default 300), when its
  socket path is removed or replaced, when stale, and on SIGTERM (draining its children).

Trade-offs (as with multiprocessing's forkserver): every child shares the zygote's address
space layout (ASLR) and hash seed, so a layout leaked by one proxy holds for its siblings.
OpenSSL's RNG reseeds after a fork and Python's ``random`` reseeds at fork; keys are made in
the child.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import time

__all__ = ["DIR", "Forked", "Pending", "code_stamp", "main", "request", "running",
           "socket_path", "spawn", "stop"]

DIR = "/run/corral"
PROTOCOL = 1
IDLE = 300.0
REPLY_TIMEOUT = 1.0
# what the proxy reads from its environment at run time: passed per run
PASS_ENV = ("CORRAL_PROXY_LOOP", "RES_OPTIONS", "LOCALDOMAIN", "HOSTALIASES")
# what shapes the zygote's preloaded state: part of its key and of its environment
KEY_ENV = ("PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "OPENSSL_CONF", "OPENSSL_MODULES")
_NAMESPACES = ("mnt", "pid", "net", "cgroup", "user", "ipc", "uts")
_CRED = struct.Struct("3i")
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,64}")


Forked = tuple[int, int]  # the child's pid and pidfd (a NamedTuple costs ~1 ms to import)


def package_dir() -> str:
    import corral

    return os.path.dirname(os.path.realpath(corral.__file__))


def _pythonpath(pkg: str) -> list[str]:
    """PYTHONPATH without a leading entry for the package's parent (the zygote's has one)."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    if entries and os.path.realpath(entries[0]) == os.path.dirname(pkg):
        entries = entries[1:]
    return entries


def _key(pkg: str) -> str:
    from corral._digest import blake2b  # not hashlib: ~4 ms of the launch path

    h = blake2b(digest_size=8)
    # the interpreter and its environment (a venv's python and python3 are one)
    parts = [os.path.realpath(sys.executable), sys.prefix, pkg, os.pathsep.join(_pythonpath(pkg))]
    parts += [f"{k}={os.environ.get(k, '')}" for k in KEY_ENV if k != "PYTHONPATH"]
    parts += [f"{ns}:{os.stat(f'/proc/self/ns/{ns}').st_ino}" for ns in _NAMESPACES]
    h.update("\0".join(parts).encode())
    return h.hexdigest()


def socket_path(pkg: str | None = None) -> str:
    return f"{DIR}/zygote-{_key(pkg or package_dir())}.sock"


@functools.cache
def _other_stamped() -> tuple[str, ...]:
    import ssl
    import sysconfig

    paths = ssl.get_default_verify_paths()
    return tuple(p for p in (sys.executable, sysconfig.get_paths()["purelib"], paths.cafile,
                             paths.capath) if p)


def code_stamp(pkg: str) -> int:
    """A digest of the package's ``*.py`` files (their paths and latest ctime), the
    interpreter, site-packages and the trust store: any edit, added or removed module, install
    or upgrade changes it. Directory times are left out on purpose: Python creating a
    ``__pycache__`` (the zygote's own first imports in a fresh checkout) is not a change."""
    from corral._digest import blake2b

    latest = 0
    names: list[str] = []
    stack = [pkg]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    names.append(entry.path)
                    latest = max(latest, entry.stat(follow_symlinks=False).st_ctime_ns)
    for p in _other_stamped():
        with contextlib.suppress(OSError):
            latest = max(latest, os.stat(p).st_ctime_ns)
    names.sort()
    names.append(str(latest))
    return int.from_bytes(blake2b("\0".join(names).encode(), digest_size=8).digest(), "big")


# -- client (the launcher) ------------------------------------------------------------------


def _handshake() -> bytes:
    import resource

    limits = {n: resource.getrlimit(getattr(resource, n)) for n in dir(resource)
              if n.startswith("RLIMIT_")}
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
    with open("/proc/self/status") as f:
        umask = next((int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:")), 0o022)
    with open("/proc/self/oom_score_adj") as f:
        oom = f.read().strip()
    return json.dumps({
        "v": PROTOCOL, "env": {k: os.environ[k] for k in PASS_ENV if k in os.environ},
        "rlimits": limits, "umask": umask, "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "oom": oom, "cgroup": cgroup,
    }).encode()


class Pending:
    """A request sent to the zygote; ``result`` collects its answer (the launcher resolves its
    policy meanwhile, the zygote forks)."""

    def __init__(self, conn: socket.socket, pkg: str, deadline: float) -> None:
        self._conn, self._pkg, self._deadline = conn, pkg, deadline

    def result(self) -> Forked | None:
        """The child's pid and pidfd; ``None`` if the zygote was stale, slow or failed (a
        fresh zygote is started after a stale one)."""
        conn = self._conn
        fds: list[int] = []
        try:
            conn.settimeout(max(0.001, self._deadline - time.monotonic()))
            msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1, socket.MSG_CMSG_CLOEXEC)
            reply = json.loads(msg) if msg else {}
            if "pid" in reply and len(fds) == 1:
                return int(reply["pid"]), fds.pop()
            if reply.get("error") == "stale":
                spawn(self._pkg)
            return None
        except (OSError, ValueError):
            return None
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()


def request(ctl: socket.socket, life: socket.socket, *,
            timeout: float = REPLY_TIMEOUT) -> Pending | None:
    """Ask this checkout's zygote to fork a proxy child holding ``ctl`` and ``life`` (the
    child ends of the launcher's socketpairs, which the caller may close once this returns).
    ``None`` if no zygote listens (one is started for the next runs): fork locally. A
    ``Pending`` whose ``result`` is ``None`` means the same, with fresh sockets (a late child
    of the zygote sees EOF on these and exits)."""
    pkg = package_dir()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            conn.connect(socket_path(pkg))
        except (FileNotFoundError, ConnectionRefusedError):
            spawn(pkg)
            conn.close()
            return None
        _pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                       _CRED.size))
        if uid != 0:
            conn.close()
            return None
        socket.send_fds(conn, [_handshake()], [ctl.fileno(), life.fileno()])
    except (OSError, ValueError):
        conn.close()
        return None
    return Pending(conn, pkg, deadline)


def _zygote_env() -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
           "PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: os.environ[k] for k in KEY_ENV if os.environ.get(k)})
    pkg = package_dir()
    # the same corral as the launcher's, whatever put it on the launcher's path
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(pkg), *_pythonpath(pkg)])
    return env


def spawn(pkg: str | None = None, *, idle: float | None = None) -> bool:
    """Start a zygote in the background unless one is starting or running (its lock is held).

    Returns at once (one short-lived intermediate process is reaped here); the zygote takes
    ~0.3 s of CPU to preload before it listens."""
    import fcntl

    pkg = pkg or package_dir()
    try:
        os.mkdir(DIR, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(DIR)
    if st.st_uid != 0 or st.st_mode & 0o077 or not os.path.isdir(DIR):
        return False  # not root's own directory: no zygote
    lock = os.open(socket_path(pkg)[:-5] + ".lock",
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return False  # a zygote is starting or running
    argv = [sys.executable, "-m", "corral.runtime.zygote", "--package", pkg, "--lock-fd", "3"]
    if idle is not None:
        argv += ["--idle", str(idle)]
    tag = os.environ.get("CORRAL_ZYGOTE_TAG", "")
    if _TAG.fullmatch(tag):  # who started it (a test session, a benchmark): see ``running``
        argv += ["--tag", tag]
    env = _zygote_env()
    pid = os.fork()
    if pid == 0:  # intermediate: new session, fork the zygote, leave (init adopts it)
        try:
            os.setsid()
            if os.fork() == 0:
                high = fcntl.fcntl(lock, fcntl.F_DUPFD, 10)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.dup2(high, 3)
                os.set_inheritable(3, True)
                os.closerange(4, 2**31 - 1)
                os.chdir("/")
                os.execve(sys.executable, argv, env)
        finally:
            os._exit(0)
    os.close(lock)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


# -- management (tests, tooling) -------------------------------------------------------------


def running(tag: str | None = None) -> list[int]:
    """Pids of the zygotes running on this machine (any checkout); with ``tag``, those
    started by launchers whose ``CORRAL_ZYGOTE_TAG`` was ``tag``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"-m" in argv and b"corral.runtime.zygote" in argv and (
                    tag is None or b"--tag\0" + tag.encode() + b"\0" in b"\0".join(argv)):
                out.append(int(name))
    return out


def stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM a zygote (it drains its children), SIGKILL after ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            if select.select([pidfd], [], [], timeout)[0]:
                return
    finally:
        os.close(pidfd)


def main(argv: list[str] | None = None) -> int:
    from corral.runtime.zygote_server import serve_main

    return serve_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
