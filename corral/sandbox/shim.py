"""Building the argv of the privilege-drop shim that runs between bubblewrap and CMD.

``shim_argv(cfg)`` is placed after bwrap's ``--`` and before CMD::

    bwrap ... -- /usr/bin/python3 -I -S -c <shim source> <config json> CMD ARGS...

The shim runs as root inside the sandbox's namespaces, sets ``no_new_privs``, applies Landlock,
drops every capability and becomes the sandbox uid/gid, then execs CMD (see
``_privdrop.py`` for the exact order and its invariants). ``-I -S`` keep the interpreter from
reading anything the sandbox could influence (environment, user site, ``sys.path`` entries)
and keep startup short.

Invariants: the uid/gid are never 0; every path handed to Landlock is absolute; the config is
one JSON argv element, so no value in it is ever interpreted by a shell.
"""

# No ``from __future__ import annotations``: a NamedTuple would compile a ForwardRef per field,
# on every launch (docs/benchmarks.md, "Launch-path choices").

import json
from functools import cache
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "DEFAULT_DEVICES", "DEFAULT_SCRATCH", "PYTHON", "ShimConfig", "shim_argv", "shim_payload",
    "shim_source",
]

PYTHON = "/usr/bin/python3"

# Device nodes a normal program opens for writing (shell redirections, terminals). Landlock
# handles write and device-ioctl rights, so these need explicit grants; missing ones are skipped.
DEFAULT_DEVICES: tuple[str, ...] = (
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
    "/dev/ptmx", "/dev/pts",
)
# Directories writable if present without being named in ``writable``: POSIX shared memory and
# semaphores (shm_open, sem_open; Python's multiprocessing) live in /dev/shm.
DEFAULT_SCRATCH: tuple[str, ...] = ("/dev/shm",)


class _ShimFields(NamedTuple):
    uid: int
    gid: int
    writable: tuple[str, ...] = ()
    readable_exec: tuple[str, ...] | None = None
    scope_abstract_unix: bool = True
    scope_signals: bool = True
    no_new_privs: bool = True
    require_landlock: bool = True
    devices: tuple[str, ...] = DEFAULT_DEVICES
    scratch: tuple[str, ...] = DEFAULT_SCRATCH


class ShimConfig(_ShimFields):
    """What the shim does inside the sandbox (immutable; checked when made and when used).

    ``writable``: paths (inside the sandbox) beneath which writes are allowed; everything else is
    read-only to Landlock. ``readable_exec``: if set, reads and exec are also limited to these
    (plus ``writable``); ``None`` leaves reads to the mount namespace. ``devices`` (read/write/
    ioctl, no creation) and ``scratch`` (like ``writable``) are granted only where they exist.
    ``require_landlock=False`` lets a run proceed on a kernel without Landlock (or without
    scoping) — only by explicit choice.

    A named tuple rather than a dataclass: it is built on every ``corral run``, which does not
    load ``dataclasses``. ``shim_argv`` checks it again, so a copy made with ``_replace`` (which
    bypasses ``__new__``) cannot carry a root id or a relative path into the sandbox.
    """

    __slots__ = ()

    def __new__(
        cls,
        uid: int,
        gid: int,
        writable: tuple[str, ...] = (),
        readable_exec: tuple[str, ...] | None = None,
        scope_abstract_unix: bool = True,
        scope_signals: bool = True,
        no_new_privs: bool = True,
        require_landlock: bool = True,
        devices: tuple[str, ...] = DEFAULT_DEVICES,
        scratch: tuple[str, ...] = DEFAULT_SCRATCH,
    ) -> "ShimConfig":
        self = super().__new__(cls, uid, gid, writable, readable_exec, scope_abstract_unix,
                               scope_signals, no_new_privs, require_landlock, devices, scratch)
        self.check()
        return self

    def check(self) -> None:
        """``ValueError`` unless both ids are non-root and every path is absolute."""
        for name in ("uid", "gid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**32 - 1:
                raise ValueError(f"sandbox {name} must be a non-root id, not {value!r}")
        for path in (*self.writable, *(self.readable_exec or ()), *self.devices,
                     *self.scratch):
            if not path.startswith("/") or "\0" in path:
                raise ValueError(f"shim paths must be absolute: {path!r}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "uid": self.uid,
                "gid": self.gid,
                "writable": list(self.writable),
                "readable_exec": None if self.readable_exec is None else list(self.readable_exec),
                "devices": list(self.devices),
                "scratch": list(self.scratch),
                "scope_abstract_unix": self.scope_abstract_unix,
                "scope_signals": self.scope_signals,
                "no_new_privs": self.no_new_privs,
                "require_landlock": self.require_landlock,
            },
            separators=(",", ":"),
        )


# The -c program: run the shim from bytecode compiled here when the sandbox's interpreter has
# the same bytecode format (cache tag), else compile the source shipped beside it: unmarshalling
# is far cheaper than compiling on every launch.
LOADER = (
    "import sys,marshal\n"
    "t,c,s=sys.argv[1:4]\n"
    "del sys.argv[1:4]\n"
    "exec(marshal.loads(bytes.fromhex(c))if t==sys.implementation.cache_tag "
    "else compile(s,'corral-shim','exec'))\n"
)


@cache
def shim_source() -> str:
    """The shim's source text, read once per process."""
    return (Path(__file__).with_name("_privdrop.py")).read_text()


@cache
def shim_payload() -> tuple[str, str, str]:
    """The loader's three arguments (cache tag, the shim's bytecode as hex, its source), made
    once per process."""
    import marshal
    import sys
    from importlib.machinery import SourceFileLoader

    # get_code() reuses (and writes) the __pycache__ bytecode: no compile on every launch
    path = str(Path(__file__).with_name("_privdrop.py"))
    code = SourceFileLoader("corral_shim", path).get_code("corral_shim")
    return str(sys.implementation.cache_tag), marshal.dumps(code).hex(), shim_source()


def shim_argv(cfg: ShimConfig) -> list[str]:
    """The argv prefix that runs the shim; append CMD and its arguments."""
    cfg.check()
    return [PYTHON, "-I", "-S", "-c", LOADER, *shim_payload(), cfg.to_json()]
