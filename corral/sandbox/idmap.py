"""ID-mapped bind mounts: the workspace shows as the sandbox user's inside, the owner's outside.

How: ``open_tree(OPEN_TREE_CLONE)`` makes a detached copy of the host directory's mount,
``mount_setattr(MOUNT_ATTR_IDMAP)`` attaches a user namespace whose maps read
``<owner> <sandbox id> 1``, and the detached mount fd is handed to bubblewrap (``--bind-fd``),
which attaches it at ``/workspace`` inside the sandbox's own mount namespace. The host mount
table never holds the mapped mount, so a killed launcher leaves no mount behind.

A detached mount can be attached only once, so each spawn attaches its own ``clone_tree`` copy
(made in the launcher, whose mount namespace the detached tree came from); the copy keeps the
ID map.

Invariants: only the owner's uid/gid is mapped; every other owner (root included) shows as the
overflow id inside and cannot be written through the mount. The helper user namespace lives
only as long as the mount needs it (the kernel keeps a reference); its process is reaped here.
"""

from __future__ import annotations

import os

from corral.sandbox import _libc

__all__ = ["clone_tree", "idmapped_tree", "make_userns"]


def make_userns(uid_map: str, gid_map: str) -> int:
    """Return an fd for a fresh user namespace with the given maps (its helper is reaped)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: unshare, report, wait to be released; never returns to Python code
        try:
            os.close(ready_r)
            os.close(go_w)
            _libc.unshare(_libc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("cannot create a user namespace for the ID-mapped workspace")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(uid_map)
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def idmapped_tree(path: str, owner_uid: int, owner_gid: int, uid: int, gid: int) -> int:
    """A detached clone of ``path`` where ``owner_uid/gid`` appear as ``uid/gid``. Caller closes."""
    userns = make_userns(f"{owner_uid} {uid} 1\n", f"{owner_gid} {gid} 1\n")
    try:
        tree = _libc.open_tree(
            path, _libc.OPEN_TREE_CLONE | _libc.OPEN_TREE_CLOEXEC | _libc.AT_RECURSIVE
        )
        try:
            _libc.mount_setattr_idmap(tree, userns)
        except BaseException:
            os.close(tree)
            raise
        return tree
    finally:
        os.close(userns)


def clone_tree(tree_fd: int) -> int:
    """A fresh detached copy of a detached (ID-mapped) tree, to attach once. Caller closes."""
    return _libc.open_tree(
        "",
        _libc.OPEN_TREE_CLONE | _libc.OPEN_TREE_CLOEXEC | _libc.AT_RECURSIVE | _libc.AT_EMPTY_PATH,
        tree_fd,
    )
