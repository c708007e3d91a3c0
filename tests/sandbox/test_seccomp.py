"""The seccomp filter, against the real kernel.

Every blocked class has a probe that calls the syscall with arguments the kernel answers with
something other than EPERM when nothing filters it (bad flags, a bad fd, a NULL pointer): the
run without the filter is the positive control, showing the probe reaches the kernel, and the
run with it must get EPERM (ENOSYS for clone3). Probes that would change the machine use
arguments the kernel rejects. The probe process loads the exact bytes ``build_filter()`` returns.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, require_root, require_tools

from corral.sandbox import seccomp

pytestmark = pytest.mark.root

# Runs in a child: optionally loads the BPF program from argv[1], then runs each probe and
# prints {name: errno or 0}. Raw syscalls through libc.syscall, numbers from libseccomp.
LOADER = r"""
import ctypes, json, mmap, os, sys

libc = ctypes.CDLL(None, use_errno=True)

def load(path):
    prog = open(path, "rb").read()
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(prog)
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()

"""

PROBE = LOADER + r"""
import pyseccomp

libc.syscall.restype = ctypes.c_long
NR = lambda name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
L = ctypes.c_long

def sc(name, *args):
    res = libc.syscall(L(NR(name)), *[L(a) for a in args])
    err = ctypes.get_errno() if res == -1 else 0
    if name == "socket" and res >= 0:
        os.close(res)
    return err

CLONE_THREAD = 0x10000
BAD = 0xFFFFFFFF
NULLDEV = os.open("/dev/null", os.O_RDONLY)
PROBES = {
    "ptrace": lambda: sc("ptrace", 16, -1, 0, 0),
    "process_vm_readv": lambda: sc("process_vm_readv", os.getpid(), 0, 0, 0, 0, 1),
    "process_vm_writev": lambda: sc("process_vm_writev", os.getpid(), 0, 0, 0, 0, 1),
    "pidfd_getfd": lambda: sc("pidfd_getfd", -1, -1, 0),
    "bpf": lambda: sc("bpf", 9999, 0, 0),
    "keyctl": lambda: sc("keyctl", 9999, 0, 0, 0, 0),
    "add_key": lambda: sc("add_key", 0, 0, 0, 0, 0),
    "request_key": lambda: sc("request_key", 0, 0, 0, 0),
    "mount": lambda: sc("mount", 0, 0, 0, 0, 0),
    "umount2": lambda: sc("umount2", 0, 0),
    "pivot_root": lambda: sc("pivot_root", 0, 0),
    "move_mount": lambda: sc("move_mount", -1, 0, -1, 0, BAD),
    "open_tree": lambda: sc("open_tree", -1, 0, BAD),
    "fsopen": lambda: sc("fsopen", 0, 0),
    "fsmount": lambda: sc("fsmount", -1, 0, 0),
    "fsconfig": lambda: sc("fsconfig", -1, 0, 0, 0, 0),
    "fspick": lambda: sc("fspick", -1, 0, BAD),
    "mount_setattr": lambda: sc("mount_setattr", -1, 0, BAD, 0, 0),
    "unshare": lambda: sc("unshare", 0),
    "setns": lambda: sc("setns", -1, 0),
    "kexec_load": lambda: sc("kexec_load", 0, 0, 0, BAD),
    "kexec_file_load": lambda: sc("kexec_file_load", -1, -1, 0, 0, BAD),
    "io_uring_setup": lambda: sc("io_uring_setup", 0, 0),
    "io_uring_enter": lambda: sc("io_uring_enter", -1, 0, 0, 0, 0, 0),
    "io_uring_register": lambda: sc("io_uring_register", -1, 0, 0, 0),
    "perf_event_open": lambda: sc("perf_event_open", 0, 0, -1, -1, 0),
    "userfaultfd": lambda: sc("userfaultfd", BAD),
    "init_module": lambda: sc("init_module", 0, 0, 0),
    "finit_module": lambda: sc("finit_module", -1, 0, 0),
    "delete_module": lambda: sc("delete_module", 0, 0),
    "reboot": lambda: sc("reboot", 0, 0, 0, 0),
    "swapon": lambda: sc("swapon", 0, 0),
    "swapoff": lambda: sc("swapoff", 0),
    "acct": lambda: sc("acct", ctypes.addressof(ctypes.create_string_buffer(b"/nonexistent/x"))),
    "iopl": lambda: sc("iopl", 4),
    "ioperm": lambda: sc("ioperm", 0x10000, 1, 1),
    "open_by_handle_at": lambda: sc("open_by_handle_at", -1, 0, 0),
    "name_to_handle_at": lambda: sc("name_to_handle_at", -1, 0, 0, 0, BAD),
    "lookup_dcookie": lambda: sc("lookup_dcookie", 0, 0, 0),
    "clone3": lambda: sc("clone3", 0, 0),
    # CLONE_THREAD without CLONE_SIGHAND is EINVAL: the kernel refuses before creating anything
    "clone_newns": lambda: sc("clone", 0x00020000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newcgroup": lambda: sc("clone", 0x02000000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newuts": lambda: sc("clone", 0x04000000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newipc": lambda: sc("clone", 0x08000000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newuser": lambda: sc("clone", 0x10000000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newpid": lambda: sc("clone", 0x20000000 | CLONE_THREAD, 0, 0, 0, 0),
    "clone_newnet": lambda: sc("clone", 0x40000000 | CLONE_THREAD, 0, 0, 0, 0),
    "socket_packet": lambda: sc("socket", 17, 3, 0),
    "socket_packet_hibits": lambda: sc("socket", (1 << 32) | 17, 3, 0),
    "socket_inet_raw": lambda: sc("socket", 2, 3, 1),
    "socket_inet_raw_cloexec": lambda: sc("socket", 2, 3 | 0o2000000 | 0o4000, 1),
    "socket_inet6_raw": lambda: sc("socket", 10, 3, 58),
    # sockets only create (never connect): AF_VSOCK would reach the hypervisor host
    "socket_vsock": lambda: sc("socket", 40, 1, 0),
    "socket_vsock_hibits": lambda: sc("socket", (1 << 32) | 40, 1, 0),
    "socket_inet_hibits_raw": lambda: sc("socket", (1 << 32) | 2, 3, 1),
    "tiocsti": lambda: sc("ioctl", NULLDEV, 0x5412, 0),
    "tiocsti_hibits": lambda: sc("ioctl", NULLDEV, (1 << 32) | 0x5412, 0),
    "tioclinux": lambda: sc("ioctl", NULLDEV, 0x541C, 0),
    "personality_no_aslr": lambda: sc("personality", 0x0040000),
    "personality_read_implies_exec": lambda: sc("personality", 0x0400000),
    # must stay allowed
    "ok_clone_plain": lambda: sc("clone", CLONE_THREAD, 0, 0, 0, 0),
    "ok_socket_tcp": lambda: sc("socket", 2, 1, 0),
    "ok_socket_udp6": lambda: sc("socket", 10, 2, 0),
    "ok_socket_unix": lambda: sc("socket", 1, 1, 0),
    "ok_socket_netlink": lambda: sc("socket", 16, 3, 0),
    "ok_ioctl_fionread": lambda: sc("ioctl", NULLDEV, 0x541B, 0),
    "ok_personality_query": lambda: sc("personality", 0xFFFFFFFF),
    "ok_personality_linux": lambda: sc("personality", 0),
    "ok_getpid": lambda: sc("getpid"),
}

names = list(PROBES)
if sys.argv[1] != "none":
    load(sys.argv[1])
print(json.dumps({n: PROBES[n]() for n in names}))
"""

# Executes a syscall through a foreign ABI from machine code on an executable page.
ABI_PROBE = LOADER + r"""
if sys.argv[1] != "none":
    load(sys.argv[1])
code = {
    # mov eax, 20 (i386 getpid); int 0x80; ret
    "i386": b"\xb8\x14\x00\x00\x00\xcd\x80\xc3",
    # mov eax, 0x40000027 (x32 getpid); syscall; ret
    "x32": b"\xb8\x27\x00\x00\x40\x0f\x05\xc3",
}[sys.argv[2]]
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print(fn())
"""

BLOCKED_ENOSYS = {"clone3"}
BLOCKED_EAFNOSUPPORT = {"socket_vsock", "socket_vsock_hibits"}


def _require_kernel() -> None:
    require_root()
    require(platform.machine() == "x86_64", "x86_64")
    require(Path("/proc/sys/kernel/seccomp/actions_avail").exists(), "seccomp filters")


@pytest.fixture(scope="module")
def bpf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seccomp") / "filter.bpf"
    path.write_bytes(seccomp.compile_filter())
    return path


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE)
    return path


def _run(probe: Path, bpf: Path | None) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, str(probe), str(bpf) if bpf else "none"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def results(probe_file: Path, bpf_file: Path) -> tuple[dict[str, int], dict[str, int]]:
    _require_kernel()
    return _run(probe_file, None), _run(probe_file, bpf_file)


PROBE_NAMES = [line.split('"')[1] for line in PROBE.splitlines() if line.startswith('    "')]


@pytest.mark.parametrize("name", [n for n in PROBE_NAMES if not n.startswith("ok_")])
def test_blocked(name: str, results: tuple[dict[str, int], dict[str, int]]) -> None:
    bare, filtered = results
    want = {38} if name in BLOCKED_ENOSYS else {97} if name in BLOCKED_EAFNOSUPPORT else {1}
    if name == "socket_inet_hibits_raw":
        want = {1, 97}  # refused either by the raw rule or by the upper-bits family rule
    assert bare[name] not in want, f"positive control: {name} without the filter: {bare[name]}"
    assert filtered[name] in want, f"{name} with the filter gave errno {filtered[name]}"


@pytest.mark.parametrize("name", [n for n in PROBE_NAMES if n.startswith("ok_")])
def test_still_allowed(name: str, results: tuple[dict[str, int], dict[str, int]]) -> None:
    bare, filtered = results
    assert filtered[name] == bare[name]
    assert filtered[name] != 1


@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_foreign_abi_killed(abi: str, probe_file: Path, bpf_file: Path) -> None:
    _require_kernel()
    abi_probe = probe_file.with_name("abi.py")
    abi_probe.write_text(ABI_PROBE)
    bare = subprocess.run(
        [sys.executable, str(abi_probe), "none", abi],
        capture_output=True, text=True, timeout=30,
    )
    # Positive control: the foreign entry point reaches the kernel (i386 returns our pid; x32
    # returns -ENOSYS where the kernel lacks CONFIG_X86_X32_ABI), the process survives.
    assert bare.returncode == 0, bare.stderr
    if abi == "i386":
        assert int(bare.stdout) > 0
    filtered = subprocess.run(
        [sys.executable, str(abi_probe), str(bpf_file), abi],
        capture_output=True, text=True, timeout=30,
    )
    assert filtered.returncode == -31, (filtered.returncode, filtered.stderr)  # SIGSYS


def test_bwrap_loads_filter(tmp_path: Path) -> None:
    """The bytes are what bubblewrap's --seccomp expects, and they take effect there."""
    _require_kernel()
    require_tools("bwrap")
    data = seccomp.build_filter()
    assert data == seccomp.compile_filter()
    script = (
        "import ctypes,os;"
        "print([l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].split()[1]);"
        "libc=ctypes.CDLL(None,use_errno=True);"
        "print(libc.unshare(0), ctypes.get_errno())"
    )
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        out = subprocess.run(
            [shutil.which("bwrap") or "bwrap", "--dev-bind", "/", "/", "--seccomp", str(r),
             "/usr/bin/python3", "-I", "-S", "-c", script],
            pass_fds=(r,), capture_output=True, text=True, timeout=30,
        )
    finally:
        os.close(r)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "-1", "1"]


def test_build_filter_cache(corral_env: dict[str, str]) -> None:
    """The disk cache is used only when root-owned and private; a tampered file is ignored."""
    _require_kernel()
    seccomp.build_filter.cache_clear()
    try:
        first = seccomp.build_filter()
        cached = list((Path(corral_env["CORRAL_HOME"]) / "cache").glob("seccomp-*.bpf"))
        assert len(cached) == 1
        assert cached[0].stat().st_mode & 0o077 == 0
        seccomp.build_filter.cache_clear()
        assert seccomp.build_filter() == first
        # a loosened cache file is not trusted
        cached[0].write_bytes(b"\0" * 8)
        cached[0].chmod(0o644)
        seccomp.build_filter.cache_clear()
        assert seccomp.build_filter() == first
    finally:
        seccomp.build_filter.cache_clear()
