"""The sandbox's seccomp filter, compiled by libseccomp into a BPF program bubblewrap loads.

``build_filter()`` returns the program as bytes (an array of ``struct sock_filter``), ready
for ``bwrap --seccomp FD``.

Invariants:
- Default allow; every listed syscall (class) fails with ``EPERM``, except ``clone3`` which
  fails with ``ENOSYS`` so that libc falls back to ``clone``, whose flags *can* be inspected.
- Only the native x86_64 ABI is allowed. A syscall made through the i386 ABI (``int 0x80``)
  or the x32 ABI (``__X32_SYSCALL_BIT``) kills the process: libseccomp emits an architecture
  check first and an x32-number check for x86_64 filters, so a 32-bit entry point cannot
  bypass the argument filters below.
- Sockets: only unix, IPv4/IPv6 (not raw) and netlink; ``AF_PACKET`` is EPERM, any other family
  (AF_VSOCK, which reaches the hypervisor host around the network namespace, AF_ALG, ...)
  EAFNOSUPPORT.
- Argument filters compare only the bits the kernel reads. ``socket``, ``ioctl`` and
  ``personality`` take ``int``/``unsigned int`` arguments that the kernel truncates to 32
  bits, so every comparison masks the upper half away: ``socket(0x1_00000011, ...)`` is still
  ``AF_PACKET``. The socket type is masked to ``SOCK_TYPE_MASK`` so ``SOCK_RAW|SOCK_CLOEXEC``
  is still raw.
- The compiled bytes are cached in memory, and on disk only inside a root-owned directory
  that nobody else can write, keyed by corral version and a digest of the rule table; a cache
  file that is not root-owned 0600 is ignored.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from corral import __version__

__all__ = ["BLOCKED_SYSCALLS", "build_filter", "compile_filter"]

# Whole syscalls refused with EPERM.
BLOCKED_SYSCALLS: tuple[str, ...] = (
    # other processes' memory and tracing
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "lookup_dcookie",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount",
    "fsconfig", "fspick", "mount_setattr", "unshare", "setns", "chroot",
    # the machine itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "iopl", "ioperm", "syslog", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "quotactl", "quotactl_fd", "uselib",
    # file handles bypass path-based checks (the "shocker" escape)
    "open_by_handle_at", "name_to_handle_at",
)

_CLONE_NEW_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,  # only meaningful for clone3/unshare; harmless to check
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
# In clone(2) the low byte is the exit signal (CSIGNAL), so CLONE_NEWTIME cannot be asked
# for there; checking that bit would refuse clone(SIGCHLD|0x80...). Leave it out for clone.
CLONE_DENY_BITS: tuple[int, ...] = tuple(
    v for k, v in _CLONE_NEW_FLAGS.items() if k != "CLONE_NEWTIME"
)

AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 2, 10, 16, 17
# Socket families a sandbox may create: unix, IPv4, IPv6 (raw excepted) and netlink (libc's
# getaddrinfo/getifaddrs use it; it only sees the sandbox's own network namespace). Every other
# family fails with EAFNOSUPPORT, as on a kernel without it. This matters beyond attack surface:
# AF_VSOCK talks to the hypervisor host and is not confined by the network namespace, so it
# would be a way out that bypasses the proxy.
OTHER_FAMILIES_BELOW_PACKET: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15)
SOCK_RAW, SOCK_TYPE_MASK = 3, 0xF
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
U32 = 0xFFFFFFFF

# personality(2): refuse the flags that weaken the agent's own address-space hardening or
# change what the kernel maps; PER_LINUX, PER_LINUX32, UNAME26 and the 0xffffffff query stay
# allowed. libseccomp allows one comparison per argument per rule, so "flag set and value is
# not the query" is spelled as one rule per (flag, other bit clear) pair.
PERSONALITY_DENY_BITS: tuple[int, ...] = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0080000,  # FDPIC_FUNCPTRS
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
    0x0800000,  # ADDR_LIMIT_32BIT
    0x8000000,  # ADDR_LIMIT_3GB
)

_CACHE_NAME = "seccomp-{version}-{digest}.bpf"


def _rule_digest() -> str:
    spec = repr(
        (BLOCKED_SYSCALLS, CLONE_DENY_BITS, PERSONALITY_DENY_BITS, TIOCSTI, TIOCLINUX,
         OTHER_FAMILIES_BELOW_PACKET, 3)
    )
    return f"{zlib.crc32(spec.encode()):08x}"


def _add_rules(flt: Any, sc: Any) -> None:
    eperm = sc.ERRNO(errno.EPERM)
    for name in BLOCKED_SYSCALLS:
        flt.add_rule(eperm, name)
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for bit in CLONE_DENY_BITS:
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    flt.add_rule(eperm, "socket", sc.Arg(0, sc.MASKED_EQ, U32, AF_PACKET))
    eafnosupport = sc.ERRNO(errno.EAFNOSUPPORT)
    for family in OTHER_FAMILIES_BELOW_PACKET:
        flt.add_rule(eafnosupport, "socket", sc.Arg(0, sc.MASKED_EQ, U32, family))
    # A full 64-bit comparison: it also refuses any value with upper bits set, whatever the
    # truncated family would be, so it can only refuse more than the families above 17.
    flt.add_rule(eafnosupport, "socket", sc.Arg(0, sc.GT, AF_PACKET))
    for family in (AF_INET, AF_INET6):
        flt.add_rule(
            eperm,
            "socket",
            sc.Arg(0, sc.MASKED_EQ, U32, family),
            sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, SOCK_RAW),
        )
    for cmd in (TIOCSTI, TIOCLINUX):
        flt.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, U32, cmd))
    for flag in PERSONALITY_DENY_BITS:
        for other in _bits_except(flag):
            flt.add_rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, flag | other, flag))


def _bits_except(flag: int) -> Iterable[int]:
    return (1 << i for i in range(32) if (1 << i) != flag)


def compile_filter() -> bytes:
    """Compile the filter with libseccomp (no caching)."""
    machine = os.uname().machine
    if machine != "x86_64":
        # The ABI reasoning above (and the tests) are for x86_64; refuse rather than guess.
        raise RuntimeError(f"corral's seccomp filter supports x86_64 only, not {machine}")
    import tempfile

    import pyseccomp as sc  # deferred: loading libseccomp is only needed on a cache miss

    flt = sc.SyscallFilter(sc.ALLOW)
    # Any non-native ABI (i386 via int 0x80; x32 numbers are rejected by libseccomp's x86_64
    # preamble with the same action) ends the process: there is no legitimate 32-bit use here.
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    # bwrap sets no_new_privs itself; do not make libseccomp demand it at load time.
    flt.set_attr(sc.Attr.CTL_NNP, 0)
    # A binary tree of syscall numbers keeps the hot path short for allowed syscalls.
    flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    _add_rules(flt, sc)
    with tempfile.TemporaryFile() as fp:
        flt.export_bpf(fp)
        fp.seek(0)
        return fp.read()


def _cache_dir() -> Path | None:
    """A root-owned, root-only directory for the compiled filter, or None if unusable."""
    if os.geteuid() != 0:
        return None
    from corral.dirs import ensure_state_dir

    try:
        path = ensure_state_dir() / "cache"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    if st.st_uid != 0 or st.st_mode & 0o022 or not os.path.isdir(path) or path.is_symlink():
        return None
    return path


def _read_cached(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o077 or st.st_size == 0 or st.st_size % 8:
            return None
        with os.fdopen(os.dup(fd), "rb") as fp:
            data = fp.read()
        return data if len(data) == st.st_size else None
    finally:
        os.close(fd)


def _write_cached(directory: Path, path: Path, data: bytes) -> None:
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".seccomp-")
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
        os.replace(tmp, path)
        for stale in directory.glob("seccomp-*.bpf"):  # filters of other versions/rule sets
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a cache we cannot write costs a compile next time, nothing more


@cache
def build_filter() -> bytes:
    """The compiled BPF program for ``bwrap --seccomp FD`` (memoized, disk-cached as root)."""
    directory = _cache_dir()
    path = None
    if directory is not None:
        path = directory / _CACHE_NAME.format(version=__version__, digest=_rule_digest())
        data = _read_cached(path)
        if data is not None:
            return data
    data = compile_filter()
    if directory is not None and path is not None:
        _write_cached(directory, path, data)
    return data
