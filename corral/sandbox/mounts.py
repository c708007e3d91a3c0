"""The bubblewrap command line: mount, pid, ipc and uts namespaces for one sandbox.

bwrap runs as root with no user namespace (so it needs none from the kernel) and builds a new
root on a tmpfs. Invariants:
- Only system trees are mounted, read-only: ``/usr`` (plus the ``/bin``-style links or dirs as
  the host has them), ``/etc``, ``/opt``. Host homes, ``/run``, ``/var``, ``/srv``, ``/mnt``,
  ``/media`` and ``/boot`` are simply absent; ``/run`` is an empty dir.
- Writable: ``/workspace`` and ``$HOME`` (bind mounts prepared by the launcher, ID-mapped when
  they belong to a host user), ``/tmp`` (a private size-limited tmpfs), nothing else.
- Every hidden path that falls inside a visible tree is masked by an unreadable (mode 000)
  file or directory, after all binds, so no later bind can re-expose it.
- ``/etc/passwd`` and ``/etc/group`` are overlays naming the sandbox user; the host files are
  not edited. ``/proc`` is a fresh procfs of the sandbox's pid namespace; ``/dev`` is minimal.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME", "SANDBOX_USER", "WORKSPACE", "BwrapPlan", "passwd_overlay"]

WORKSPACE = "/workspace"
HOME = "/home/corral"
SANDBOX_USER = "corral"

_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def passwd_overlay(uid: int, gid: int) -> tuple[bytes, bytes]:
    """Host passwd/group lines (system accounts only) plus the sandbox user and group."""

    def keep(path: str, user: bytes) -> bytes:
        out = []
        try:
            with open(path, "rb") as f:
                for line in f:
                    fields = line.split(b":")
                    if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) < 1000:
                        out.append(line if line.endswith(b"\n") else line + b"\n")
        except OSError:
            pass
        return b"".join(out) + user

    passwd = keep(
        "/etc/passwd", f"{SANDBOX_USER}:x:{uid}:{gid}:corral sandbox:{HOME}:/bin/bash\n".encode()
    )
    group = keep("/etc/group", f"{SANDBOX_USER}:x:{gid}:\n".encode())
    return passwd, group


class BwrapPlan:
    """Collects bwrap arguments and the fds they refer to (inherited by bwrap)."""

    def __init__(self, args: list[str] | None = None) -> None:
        self.args: list[str] = ["bwrap"] if args is None else args
        self.fds: list[int] = []  # to pass to bwrap
        self.visible: list[tuple[Path, str]] = []  # host tree -> inside path

    def data_file(self, content: bytes, dest: str, perms: str = "0444") -> None:
        fd = os.memfd_create("corral-file", 0)
        os.write(fd, content)
        os.lseek(fd, 0, os.SEEK_SET)
        self.fds.append(fd)
        self.args += ["--perms", perms, "--ro-bind-data", str(fd), dest]

    def base(self, sandbox_id: str, tmp_size: int, new_session: bool) -> None:
        a = self.args
        a += ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        a += ["--unshare-cgroup-try", "--hostname", f"corral-{sandbox_id}"]
        if new_session:
            a.append("--new-session")
        a += ["--ro-bind", "/usr", "/usr"]
        self.visible.append((Path("/usr"), "/usr"))
        for name in _ROOT_LINKS:
            host = f"/{name}"
            if os.path.islink(host):
                a += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                a += ["--ro-bind", host, host]
                self.visible.append((Path(host), host))
        for tree in ("/etc", "/opt"):
            if os.path.isdir(tree):
                a += ["--ro-bind", tree, tree]
                self.visible.append((Path(os.path.realpath(tree)), tree))
        a += ["--proc", "/proc", "--dev", "/dev"]
        a += ["--perms", "1777", "--size", str(tmp_size), "--tmpfs", "/tmp"]
        a += ["--dir", "/run", "--dir", "/var", "--symlink", "../run", "/var/run"]
        a += ["--perms", "0755", "--dir", "/home"]
        a += ["--symlink", "../tmp", "/var/tmp"]

    def bind(
        self, host: Path, inside: str, *, writable: bool, mapped_from: Path | None = None
    ) -> None:
        # bwrap would create missing parents 0700 (unusable by the sandbox user): make them 0755
        parents = list(Path(inside).parents)[-2::-1]
        for parent in parents:
            self.args += ["--perms", "0755", "--dir", str(parent)]
        self.args += ["--bind" if writable else "--ro-bind", str(host), inside]
        self.visible.append((Path(os.path.realpath(mapped_from or host)), inside))

    def mask(self, hidden: list[Path], empty_file: Path, empty_dir: Path) -> None:
        """Cover every hidden path that a visible tree would otherwise show."""
        seen: set[str] = set()
        for h in hidden:
            for tree, inside in self.visible:
                if tree != h and tree not in h.parents:
                    continue
                if not os.path.lexists(h) or os.path.islink(h):
                    continue  # nothing there to show, or a link whose target is checked itself
                dest = inside if tree == h else f"{inside}/{h.relative_to(tree)}"
                if dest in seen:
                    continue
                seen.add(dest)
                src = empty_dir if h.is_dir() else empty_file
                self.args += ["--ro-bind", str(src), dest]

    def finish(self, info_fd: int, seccomp_fd: int | None, chdir: str) -> None:
        self.args += ["--remount-ro", "/", "--chdir", chdir, "--info-fd", str(info_fd)]
        self.fds.append(info_fd)
        if seccomp_fd is not None:
            self.args += ["--seccomp", str(seccomp_fd)]
            self.fds.append(seccomp_fd)
