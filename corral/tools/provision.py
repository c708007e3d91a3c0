"""Provision a real corral sandbox and start the resident executor inside it.

Invariants:
- The executor runs through ``Sandbox.spawn`` like any agent command: sandbox uid, no
  capabilities, seccomp, Landlock, private network namespace (egress only through the proxy
  when the launcher wires one), cwd ``/workspace``.
- ``stop`` closes the sandbox (processes, netns, cgroup, directories, registry entry) even if
  the executor is wedged; ``start`` after ``stop`` builds a fresh one.
- How the sandbox is opened is a hook (``opener``): the default opens a bare ``Sandbox``; the
  CLI passes the same launcher ``corral run`` uses (proxy, DNS stub, CA) once it exists, so
  Mode 1 and Mode 2 get the same isolation.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any

from corral.tools.executor_client import Executor, executor_argv

__all__ = ["Opened", "SandboxProvider", "open_bare"]


class Opened:
    """A sandbox opened for the tools: the object with ``spawn`` and a ``close`` callback;
    ``egress``: its proxy when the opener made one (``corral.runtime.egress.Egress``)."""

    def __init__(self, sandbox: Any, close: Callable[[], None], egress: Any = None) -> None:
        self.sandbox = sandbox
        self.close = close
        self.egress = egress


def open_bare(spec: Any, audit: Any = None) -> Opened:
    from corral.sandbox import Sandbox

    sb = Sandbox.open(spec, audit)
    return Opened(sb, sb.close)


class SandboxProvider:
    def __init__(
        self,
        spec: Any,
        *,
        opener: Callable[[Any], Opened] = open_bare,
        ready_timeout: float = 30.0,
    ) -> None:
        self.spec = spec
        self.opener = opener
        self.ready_timeout = ready_timeout
        self._opened: Opened | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def sandbox_id(self) -> str | None:
        return getattr(self._opened.sandbox, "id", None) if self._opened else None

    def start(self) -> Executor:
        with self._lock:
            if self._opened is None:
                self._opened = self.opener(self.spec)
            try:
                proc = self._opened.sandbox.spawn(
                    executor_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=None,  # bwrap/shim failures reach our stderr (the client log)
                )
                self._proc = proc
                assert proc.stdin is not None and proc.stdout is not None
                return Executor(proc.stdin, proc.stdout, process=proc,
                                ready_timeout=self.ready_timeout)
            except BaseException:
                self._stop_locked()
                raise

    def _stop_locked(self) -> None:
        opened, self._opened = self._opened, None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if opened is not None:
            opened.close()
        if proc is not None:
            proc.wait()

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()
