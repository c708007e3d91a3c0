"""Thin ctypes wrappers for the namespace and mount syscalls Python 3.11 lacks.

Only what the launcher needs: ``setns``/``unshare`` (glibc exports them) and the new mount API
(``open_tree``, ``mount_setattr``, ``move_mount``) through ``syscall(2)`` — their numbers are the
same on every architecture since they were added after the syscall table unification.
Every wrapper raises ``OSError`` with the real errno, so callers can report what the kernel said.
"""

from __future__ import annotations

import ctypes
import os

__all__ = [
    "AT_EMPTY_PATH",
    "AT_RECURSIVE",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "MOUNT_ATTR_IDMAP",
    "MOVE_MOUNT_F_EMPTY_PATH",
    "OPEN_TREE_CLOEXEC",
    "OPEN_TREE_CLONE",
    "make_mounts_private",
    "mount_setattr_idmap",
    "move_mount",
    "open_tree",
    "setns",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

# The process's own symbols include libc's; ``ctypes.util.find_library`` would run ldconfig
# (tens of milliseconds on every launch).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def open_tree(path: str, flags: int, dirfd: int = -100) -> int:
    """``open_tree(dirfd, path, flags)``; ``dirfd`` defaults to ``AT_FDCWD``."""
    return _check(
        _libc.syscall(_SYS_OPEN_TREE, dirfd, os.fsencode(path), ctypes.c_uint(flags)), "open_tree"
    )


def mount_setattr_idmap(mount_fd: int, userns_fd: int) -> None:
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    _check(
        _libc.syscall(
            _SYS_MOUNT_SETATTR,
            mount_fd,
            b"",
            ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )


def move_mount(mount_fd: int, target: str) -> None:
    _check(
        _libc.syscall(
            _SYS_MOVE_MOUNT,
            mount_fd,
            b"",
            -100,
            os.fsencode(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        ),
        "move_mount",
    )

MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)


def make_mounts_private() -> None:
    """Stop mount events of this (already unshared) mount namespace propagating to the host."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount(MS_PRIVATE)")
