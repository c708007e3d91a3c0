"""The ``Sandbox``: create every isolation layer, spawn commands inside, tear it all down.

Invariants:
- ``create`` builds every layer (uid reservation, directories, ID-mapped mounts, cgroup,
  network namespace and rules) before anything runs; a failure at any step undoes the steps
  before it and raises — there is no half-built sandbox to run in.
- ``close`` always runs (context manager, ``finally``) and undoes everything, in reverse, each
  step independently so one failure does not leave the others behind: processes, netns (and
  with it the nft table), cgroup, directories, uid reservation.
- The command inside never starts as root with capabilities: bwrap's child is the privilege
  shim (``corral.sandbox.shim``) which drops to the sandbox uid, clears groups, drops every
  capability, sets no_new_privs and applies Landlock before exec'ing the command; bwrap loads
  the seccomp filter first.
- Every lifecycle step is one ``self._audit(kind, **fields)`` call.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from corral.errors import CorralError
from corral.sandbox import _libc, registry
from corral.sandbox.audit import AuditSink, NullSink
from corral.sandbox.command import BASE_ENV, Layout, build, environment, preload
from corral.sandbox.idmap import clone_tree, idmapped_tree
from corral.sandbox.mounts import WORKSPACE
from corral.sandbox.netns import NetNamespace, Pending
from corral.sandbox.preflight import EXIT_CORRAL, check_host
from corral.sandbox.spec import SandboxSpec
from corral.sandbox.workspace import expand_user, invoking_user, validate

__all__ = ["BASE_ENV", "Sandbox"]

T = TypeVar("T")

_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_CHILD_PID = re.compile(rb'"child-pid"\s*:\s*(\d+)')


def _noop_migration() -> None:
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
        procs = None
        for line in lines:  # "id:controllers:path"; v1 pids first, else the v2 hierarchy
            _id, ctrls, path = line.split(":", 2)
            if "pids" in ctrls.split(","):
                procs = f"/sys/fs/cgroup/pids{path.rstrip('/')}/cgroup.procs"
                break
            if _id == "0" and not ctrls:
                procs = f"/sys/fs/cgroup{path.rstrip('/')}/cgroup.procs"
        if procs is None:
            return
        fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass


class _Mapped:
    """A host directory bound inside through an ID-mapped detached mount."""

    def __init__(self, host: Path, stage: Path, tree_fd: int) -> None:
        self.host, self.stage, self.tree_fd = host, stage, tree_fd


class Sandbox:
    """One sandbox. Use ``with Sandbox.create(spec) as sb: sb.spawn([...])``."""

    def __init__(self, spec: SandboxSpec, entry: registry.Entry, audit: AuditSink) -> None:
        self.spec = spec
        self._entry = entry
        self._sink = audit
        self.id = entry.id
        self.uid = entry.uid
        self.gid = entry.gid
        self.dir = entry.dir
        self.workspace: Path = Path()
        self.home: Path = Path()
        self.rw: list[Path] = []  # --rw directories (real host paths), ID-mapped like /workspace
        self._mapped: list[_Mapped] = []
        self._remove: list[Path] = []
        self._netns: NetNamespace | None = None
        self._pending_netns: Pending[NetNamespace] | None = None
        self._cgroup: Any = None
        self._hidden: list[Path] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._killed = False  # kill_all ran: nothing started later may run
        self._info: dict[int, int] = {}  # bwrap pid -> info fd
        self._child_pids: dict[int, int] = {}
        self._info_read: dict[int, bytes] = {}  # bwrap pid -> its info fd's bytes so far
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def create(cls, spec: SandboxSpec, audit: AuditSink | None = None) -> Iterator[Sandbox]:
        sb = cls.open(spec, audit)
        try:
            yield sb
        finally:
            sb.close()

    @classmethod
    def open(cls, spec: SandboxSpec, audit: AuditSink | None = None) -> Sandbox:
        """Build the sandbox (caller must ``close()``); ``create`` is the context-manager form."""
        check_host()
        from corral.dirs import state_dir
        from corral.sandbox.diskspace import check_free_space

        check_free_space(state_dir())  # the audit trail must not fill the host's disk
        hidden = validate(spec)
        try:
            entry = registry.reserve(list(spec.policies))
        except OSError as err:
            msg = f"cannot reserve a sandbox uid: {err}"
            raise CorralError(msg, exit_code=EXIT_CORRAL) from None
        sb = cls(spec, entry, audit or NullSink())
        sb._hidden = hidden
        try:
            sb._audit("sandbox.create", uid=sb.uid, gid=sb.gid, policies=list(spec.policies))
            sb._build()
        except OSError as err:  # a layer the kernel or a tool refused: fail closed, say which
            sb.close()
            raise CorralError(f"cannot set up the sandbox: {err}", exit_code=EXIT_CORRAL) from None
        except BaseException:
            sb.close()
            raise
        return sb

    def reserve_helper_uid(self) -> int:
        """A further unprivileged uid/gid (equal) for a helper of this sandbox (its proxy).

        Reserved in the registry like the sandbox's own, freed at teardown or by ``gc``.
        """
        return registry.reserve_helper(self._entry)

    def _audit(self, kind: str, **fields: Any) -> None:
        self._sink.emit(self.id, kind, fields)

    def _build(self) -> None:
        spec = self.spec
        # the netns (two tool runs) builds on its own thread while the rest is set up here
        tools = check_host()
        self._pending_netns = NetNamespace.start(
            self.uid, spec.proxy_port, spec.dns_port, ip=tools["ip"], nft=tools["nft"],
            log_group=spec.refusal_log,
        )
        # The cgroup before the directories, so that its attach warm-up starts about one RCU
        # grace period before the command joins it (see ``warm_cgroup_attach``); after the
        # cgroup exists, since the warm-up holds the kernel's cgroup_mutex, which the cgroup's
        # mkdirs need too. Its audit event keeps its place in the trail, after the directories'.
        self._cgroup = self._make_cgroup()
        self.warm_cgroup_attach()
        empty_file, empty_dir = self.dir / "hidden-file", self.dir / "hidden-dir"
        os.close(os.open(empty_file, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0))
        empty_dir.mkdir(mode=0)
        self.workspace = self._directory("workspace", spec.workspace, create=False)
        home = spec.home or spec.files.home
        self.home = self._directory("home", expand_user(home) if home else None, create=True)
        for n, extra in enumerate(spec.files.write):
            self.rw.append(self._directory(f"rw{n}", extra, create=False))
        lim = spec.limits
        self._audit("sandbox.layer", layer="limits", memory=lim.memory, pids=lim.pids,
                    cpu=lim.cpu, wall=lim.wall, idle=lim.idle)
        preload()  # the spawn's loading (shim, seccomp) while ip and nft still run
        pending, self._pending_netns = self._pending_netns, None
        self._netns = pending.result()
        self._audit(
            "sandbox.layer", layer="network", proxy_port=spec.proxy_port, dns_port=spec.dns_port
        )

    @staticmethod
    def warm_cgroup_attach() -> None:
        """Pay the kernel's cgroup-migration wait on a helper thread, off the critical path.

        The first cgroup migration after a quiet spell waits for an RCU grace period while the
        kernel's threadgroup lock switches to its writer side; migrations shortly after are
        fast. Writing our own pid into the cgroup we are already in is a no-op migration that
        takes that lock, so the command's own join (``Cgroup.attach_self`` before bwrap) finds
        it warm. The lock stays warm for about one more grace period, so call this about one
        grace period before ``spawn`` (the measurements: docs/benchmarks.md, "Launch-path
        choices").
        Best effort: an error only leaves the wait where it was.
        """
        threading.Thread(target=_noop_migration, daemon=True, name="corral-cgroup-warm").start()

    def _directory(self, name: str, host: Path | None, *, create: bool) -> Path:
        """Ephemeral dir owned by the sandbox uid, or a host dir mapped to it."""
        if host is None:
            path = self.dir / name
            path.mkdir(mode=0o700)
            os.chown(path, self.uid, self.gid)
            self._remove.append(path)
            self._audit("sandbox.layer", layer=name, path=str(path), ephemeral=True)
            return path
        if create and not host.exists():
            uid, gid, _ = invoking_user()
            host.mkdir(mode=0o700, parents=True)
            os.chown(host, uid, gid)
        real = Path(os.path.realpath(host))
        st = real.stat()
        stage = self.dir / f"stage-{name}"
        stage.mkdir(mode=0o700)
        try:
            fd = idmapped_tree(str(real), st.st_uid, st.st_gid, self.uid, self.gid)
        except OSError as err:
            raise CorralError(
                f"cannot ID-map {name} {real}: {err.strerror or err} (filesystem without "
                "ID-mapped mount support?)",
                exit_code=EXIT_CORRAL,
            ) from None
        self._mapped.append(_Mapped(real, stage, fd))
        self._audit("sandbox.layer", layer=name if name in ("workspace", "home") else "rw",
                    path=str(real), ephemeral=False, owner=st.st_uid)
        return real

    def _make_cgroup(self) -> Any:
        try:
            from corral.sandbox.cgroups import Cgroup
        except ImportError as err:
            raise CorralError(
                f"the cgroup limits layer is missing from this corral install ({err})",
                exit_code=EXIT_CORRAL,
            ) from None
        return Cgroup.create(self._entry.cgroup or f"corral-{self.id}", self.spec.limits)

    # -- hooks for the proxy ---------------------------------------------------------------

    @property
    def netns_fd(self) -> int:
        if self._netns is None:
            raise RuntimeError("sandbox has no network namespace (closed?)")
        return self._netns.fd

    def run_in_netns(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a helper thread inside the sandbox netns (e.g. to create a listener)."""
        if self._netns is None:
            raise RuntimeError("sandbox has no network namespace (closed?)")
        return self._netns.run_in(fn)

    # -- running commands ------------------------------------------------------------------

    def environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        return environment(self.spec, env)

    def bwrap_argv(
        self, argv: Sequence[str], *, tty: bool, cwd: str
    ) -> tuple[list[str], list[int]]:
        """The full command line for ``argv`` and the fds bwrap must inherit."""
        lay = Layout(
            self.id, self.uid, self.gid, self.spec, self.workspace,
            self._stage_for(self.workspace), self.home, self._stage_for(self.home),
            tuple(self._hidden), self.dir / "hidden-file", self.dir / "hidden-dir",
            tuple((p, self._stage_for(p)) for p in self.rw),
        )
        cmd = build(lay, argv, tty=tty, cwd=cwd)
        self._pending_info = cmd.info_fd
        return cmd.args, cmd.fds

    def _stage_for(self, path: Path) -> Path:
        for m in self._mapped:
            if m.host == path:
                return m.stage
        return path

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        tty: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str = WORKSPACE,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside as the sandbox user. ``tty``: stdio is a pty we own."""
        if self._closed or self._netns is None:
            raise RuntimeError("sandbox is closed")
        if not argv:
            raise CorralError("no command given", exit_code=EXIT_CORRAL)
        # exec.start is durable before the command can start (audit before action)
        self._audit("exec.start", argv=list(argv), tty=tty, cwd=cwd)
        self._record_for_exec(argv, self.environment(env))
        args, fds = self.bwrap_argv(argv, tty=tty, cwd=cwd)
        info_r = self._pending_info
        netns_fd = self._netns.fd
        cgroup = self._cgroup
        mapped = [(clone_tree(m.tree_fd), str(m.stage)) for m in self._mapped]

        why_r, why_w = os.pipe()

        def prepare() -> None:  # in the child, before exec of bwrap; reports why it failed
            step = "joining the cgroup"
            try:
                cgroup.attach_self()
                step = "entering the network namespace"
                _libc.setns(netns_fd, _libc.CLONE_NEWNET)
                if mapped:
                    step = "mounting the ID-mapped workspace/home"
                    _libc.unshare(_libc.CLONE_NEWNS)
                    _libc.make_mounts_private()
                    for tree_fd, stage in mapped:
                        _libc.move_mount(tree_fd, stage)
                if tty:
                    import fcntl
                    import termios

                    step = "attaching the pty"
                    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            except BaseException as err:
                os.write(why_w, f"{step}: {err}".encode())
                raise

        try:
            proc = subprocess.Popen(
                args,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=self.environment(env),
                pass_fds=fds,
                preexec_fn=prepare,
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError) as err:
            os.close(info_r)
            os.close(why_w)
            why = os.read(why_r, 4096).decode(errors="replace") or str(err)
            raise CorralError(f"cannot start the sandbox: {why}", exit_code=EXIT_CORRAL) from None
        finally:
            for fd in [*fds, *(tree for tree, _ in mapped), why_r, why_w]:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._procs.append(proc)
        self._info[proc.pid] = info_r
        if self._killed:  # kill_all (e.g. a failed proxy's watcher) raced with this spawn
            self.kill_all()
        if "shutil" not in sys.modules:  # teardown's rmtree: load it while the command runs
            threading.Thread(target=importlib.import_module, args=("shutil",), daemon=True,
                             name="corral-preload").start()
        return proc

    def _record_for_exec(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """What ``corral sandbox list`` shows and ``corral sandbox exec`` needs: the command and
        workspace in the entry; the first command's environment and the writable paths in the
        sandbox's own root-only directory (``corral.sandbox.enter``). Once, at the first spawn."""
        if self._entry.command:
            return
        self._entry.command, self._entry.workspace = list(argv), str(self.workspace)
        registry.update(self._entry)
        fd = os.open(self.dir / "exec.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"env": dict(env), "rw": [str(p) for p in self.rw]}, f)

    def agent_pid(self, proc: subprocess.Popen[bytes]) -> int | None:
        """The host pid of the command's process, once known.

        bwrap's info fd names its pid-namespace init; the command is that init's child. (The
        init itself ignores signals it has no handler for, so they must go to the child.)
        """
        init = self._child_pids.get(proc.pid)
        fd = self._info.get(proc.pid)
        if init is None and fd is not None:
            init = self._info_child_pid(proc.pid, fd)
        if init is None:
            return None
        try:
            with open(f"/proc/{init}/task/{init}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _info_child_pid(self, pid: int, fd: int) -> int | None:
        """The child pid from bwrap's info fd, never blocking (this runs in signal handlers).

        bwrap writes its info JSON in several writes (the pid first, then the namespaces,
        then the closing brace), and the command may run before the last one: the bytes are
        kept across calls, and the pid is taken from the first write (atomic: a pipe write
        under PIPE_BUF) as soon as it is there."""
        if pid in self._child_pids:
            return self._child_pids[pid]
        got = self._info_read.get(pid, b"")
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)
            while chunk := os.read(fd, 4096):
                got += chunk
        found = _CHILD_PID.search(got)
        if found is None:
            self._info_read[pid] = got
            return None
        self._info_read.pop(pid, None)  # found: its later bytes are never needed
        self._child_pids[pid] = int(found[1])
        return self._child_pids[pid]

    def adopt(self, pid: int) -> None:
        """Move a helper of this sandbox (its proxy) into the sandbox's cgroup, so what it
        spends on the sandbox counts towards the sandbox's limits."""
        if self._cgroup is None:
            raise RuntimeError("sandbox has no cgroup (closed?)")
        self._cgroup.attach(pid)

    def cpu_usage_ns(self) -> int:
        return int(self._cgroup.cpu_usage_ns()) if self._cgroup is not None else 0

    def oom_killed(self) -> bool:
        return bool(self._cgroup is not None and self._cgroup.oom_killed())

    def pids_exhausted(self) -> bool:
        return bool(self._cgroup is not None and self._cgroup.pids_exhausted())

    def kill_all(self) -> None:
        self._killed = True  # set first: a spawn in progress then sees it once it is listed
        if self._cgroup is not None:
            with contextlib.suppress(OSError):
                self._cgroup.kill_all()
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.kill()

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # teardown must not be cut short by ^C or SIGTERM: hold them until it is done
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            self._teardown()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _teardown(self) -> None:
        errors: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as err:
                errors.append(f"{what}: {err}")

        step("processes", self._stop_processes)
        if self._pending_netns is not None:  # setup failed while the netns was being built
            pending, self._pending_netns = self._pending_netns, None
            step("network namespace", lambda: pending.result().close())
        for fd in [*self._info.values(), *(m.tree_fd for m in self._mapped)]:
            step("descriptor", functools.partial(os.close, fd))
        if self._netns is not None:
            step("network namespace", self._netns.close)
            self._netns = None
        if self._cgroup is not None:
            step("cgroup", self._cgroup.destroy)
        step("directories", self._remove_dir)
        step("registry", lambda: registry.release(self._entry))
        self._audit("sandbox.teardown", ok=not errors, errors=errors)

    def _remove_dir(self) -> None:
        import shutil  # loaded on a thread while the command ran (a few ms of every launch)

        shutil.rmtree(self.dir)

    def _stop_processes(self) -> None:
        if any(p.poll() is None for p in self._procs):
            self.kill_all()
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
