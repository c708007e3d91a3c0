"""Refuse to start when the machine cannot give every isolation layer (fail closed).

Checked once per process: root, bubblewrap, nft, ip, the kernel's Landlock ABI, the cgroup
filesystem, network and user namespaces. A missing piece is reported in one line naming what
to install or enable. ID-mapped mounts are not checked here: the first mount that needs one
fails the sandbox's creation (exit 125) with the kernel's reason.
"""

from __future__ import annotations

import functools
import os

from corral.errors import CorralError

__all__ = ["EXIT_CORRAL", "check_host", "find_tool"]

EXIT_CORRAL = 125


def find_tool(name: str) -> str | None:
    path = os.environ.get("PATH") or os.defpath
    for d in [*path.split(os.pathsep), "/usr/sbin", "/sbin", "/usr/bin"]:
        if d and os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def _fail(msg: str) -> CorralError:
    return CorralError(msg, exit_code=EXIT_CORRAL)


@functools.cache
def check_host() -> dict[str, str]:
    """Return the tool paths; raise ``CorralError`` (exit 125) naming what is missing."""
    if os.geteuid() != 0:
        raise _fail("corral run needs root (it creates namespaces, netfilter rules and cgroups)")
    tools: dict[str, str] = {}
    for name, package in (("bwrap", "bubblewrap"), ("nft", "nftables"), ("ip", "iproute2")):
        path = find_tool(name)
        if path is None:
            raise _fail(f"{name} not found; install the {package} package (scripts/sysdeps.sh)")
        tools[name] = path
    try:
        from corral.sandbox.landlock import landlock_abi
    except ImportError as err:
        raise _fail(f"the Landlock layer is missing from this corral install ({err})") from None
    abi = landlock_abi()
    if abi < 1:
        raise _fail("the kernel has no Landlock (needs Linux 5.13+ with lsm=landlock)")
    if not os.path.isdir("/sys/fs/cgroup"):
        raise _fail("no cgroup filesystem at /sys/fs/cgroup (memory/pids limits need it)")
    if not os.path.exists("/proc/self/ns/net") or not os.path.exists("/proc/self/ns/user"):
        raise _fail("the kernel lacks network or user namespaces (CONFIG_NET_NS, CONFIG_USER_NS)")
    tools["landlock_abi"] = str(abi)
    return tools
