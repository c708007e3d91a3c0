"""One shell sandbox and its resident executor: provisioned on first use, recycled when idle.

Invariants:
- At most one executor (and one sandbox) per session; it is started lazily by the first call
  and reused by every later call, concurrent ones included.
- After ``idle`` seconds without a call the sandbox is torn down (the reaper thread); the next
  call provisions a fresh one. Only a host-dir workspace and a ``files.home`` survive that;
  an ephemeral workspace, ``/tmp`` and running processes do not.
- A dead executor is never reused: the next call provisions a new sandbox.
- ``close`` always tears down, and the session refuses calls afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from corral.tools.executor_client import Executor, ExecutorGone

__all__ = ["Provider", "ShellSession"]


class Provider(Protocol):
    """Creates the sandbox and starts the executor inside it; tears both down."""

    def start(self) -> Executor: ...

    def stop(self) -> None: ...


class ShellSession:
    def __init__(self, provider: Provider, *, idle: float | None = 30 * 60.0) -> None:
        self.provider = provider
        self.idle = idle
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._inflight = 0
        self.starts = 0
        self._stop_reaper = threading.Event()
        self._reaper: threading.Thread | None = None
        if idle is not None:
            self._reaper = threading.Thread(target=self._reap_loop, name="corral-idle", daemon=True)
            self._reaper.start()

    @property
    def running(self) -> bool:
        return self._executor is not None and self._executor.alive

    def _get(self) -> Executor:
        with self._lock:
            if self._closed:
                raise ExecutorGone("the session is closed")
            if self._executor is not None and not self._executor.alive:
                self._teardown_locked()
            if self._executor is None:
                try:
                    self._executor = self.provider.start()
                except ExecutorGone:
                    # One retry on a fresh sandbox: a start can fail under transient load
                    # (the cause is on our stderr); a second failure is reported.
                    self.provider.stop()
                    self._executor = self.provider.start()
                self.starts += 1
            self._inflight += 1
            return self._executor

    def ensure(self) -> None:
        """Provision the sandbox now if there is none (a server run must exist to ask)."""
        self._get()
        with self._lock:
            self._inflight -= 1

    def call(
        self,
        op: str,
        args: dict[str, Any],
        *,
        timeout: float = 300.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        executor = self._get()
        try:
            return executor.call(op, args, timeout=timeout, on_progress=on_progress)
        finally:
            with self._lock:
                self._inflight -= 1

    def _teardown_locked(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.close()
        self.provider.stop()

    def reap_if_idle(self, now: float | None = None) -> bool:
        """Tear the sandbox down if no call ran for ``idle`` seconds. True if it did."""
        if self.idle is None:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            executor = self._executor
            if executor is None or self._inflight:
                return False
            if now - executor.last_used < self.idle:
                return False
            self._teardown_locked()
            return True

    def _reap_loop(self) -> None:
        assert self.idle is not None
        step = max(0.05, min(self.idle / 4, 30.0))
        while not self._stop_reaper.wait(step):
            self.reap_if_idle()

    def close(self) -> None:
        self._stop_reaper.set()
        with self._lock:
            self._closed = True
            self._teardown_locked()
