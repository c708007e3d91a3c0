"""The host side of the resident executor: one JSON-lines channel to ``_sandbox_executor.py``.

The executor program is started inside a sandbox (``executor_argv``) by whoever owns the
sandbox; this module only talks to it over the child's stdin/stdout.

Invariants:
- Requests are matched to responses by id; any number of calls may be in flight (the
  executor answers each from its own thread).
- A dead or wedged executor fails every pending and later call with ``ExecutorGone``; the
  session layer then starts a fresh one. A call never hangs past its deadline.
- Nothing here parses the executor's output as anything but JSON lines: a malformed line
  kills the channel (the sandboxed side is not trusted to be well-behaved).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import IO, Any

__all__ = [
    "Executor",
    "ExecutorGone",
    "ToolFailure",
    "executor_argv",
    "executor_source",
]

MAX_LINE = 16 * 1024 * 1024  # one response line; outputs are capped far below this


class ExecutorGone(Exception):
    """The executor process died or misbehaved; the session must start a new one."""


class ToolFailure(Exception):
    """A tool call the executor refused or failed. ``kind`` says why (outside, symlink, ...)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def executor_source() -> str:
    return resources.files("corral.tools").joinpath("_sandbox_executor.py").read_text("utf-8")


def executor_argv(root: str = "/workspace", python: str = "/usr/bin/python3") -> list[str]:
    """argv that starts the executor: isolated, no site, the source passed as data."""
    return [python, "-I", "-S", "-c", executor_source(), root]


class Executor:
    """A JSON-lines client over a started executor process."""

    def __init__(
        self,
        stdin: IO[bytes],
        stdout: IO[bytes],
        *,
        process: subprocess.Popen[bytes] | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self.process = process
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiters: dict[int, queue.SimpleQueue[dict[str, Any] | None]] = {}
        self._dead: str | None = None
        ready: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._waiters[0] = ready
        self._reader = threading.Thread(target=self._read, name="executor-reader", daemon=True)
        self._reader.start()
        try:
            first = ready.get(timeout=ready_timeout)
        except queue.Empty:
            self.close()
            raise ExecutorGone("the executor did not start in time") from None
        if first is None or not first.get("ok"):
            self.close()
            raise ExecutorGone(f"the executor failed to start: {self._dead or first}")
        self.last_used = time.monotonic()

    @property
    def alive(self) -> bool:
        return self._dead is None and (self.process is None or self.process.poll() is None)

    def _read(self) -> None:
        reason = "the executor exited"
        try:
            while True:
                line = self._stdout.readline(MAX_LINE)
                if not line:
                    break
                if not line.endswith(b"\n"):
                    reason = "the executor sent an over-long line"
                    break
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    reason = "the executor sent a malformed message"
                    break
                waiter = self._waiters.get(msg.get("id"))  # type: ignore[arg-type]
                if waiter is not None:
                    waiter.put(msg)
        except (ValueError, OSError) as err:
            reason = f"the executor channel broke: {err}"
        with self._lock:
            self._dead = reason
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.put(None)

    def call(
        self,
        op: str,
        args: dict[str, Any],
        *,
        timeout: float = 300.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one operation; return its result or raise ``ToolFailure``/``ExecutorGone``."""
        ident = next(self._ids)
        waiter: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        with self._lock:
            if self._dead is not None:
                raise ExecutorGone(self._dead)
            self._waiters[ident] = waiter
        self.last_used = time.monotonic()
        try:
            line = json.dumps({**args, "id": ident, "op": op}).encode() + b"\n"
            try:
                with self._lock:
                    self._stdin.write(line)
                    self._stdin.flush()
            except OSError as err:
                raise ExecutorGone(f"cannot write to the executor: {err}") from None
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ExecutorGone(f"the executor did not answer {op} within {timeout:.0f}s")
                try:
                    msg = waiter.get(timeout=remaining)
                except queue.Empty:
                    continue
                if msg is None:
                    raise ExecutorGone(self._dead or "the executor exited")
                if "progress" in msg:
                    if on_progress is not None:
                        on_progress(msg["progress"])
                    continue
                if msg.get("ok"):
                    result = msg.get("result")
                    return result if isinstance(result, dict) else {}
                raise ToolFailure(str(msg.get("error")), str(msg.get("kind") or "error"))
        finally:
            self.last_used = time.monotonic()
            with self._lock:
                self._waiters.pop(ident, None)

    def close(self) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = "the executor was closed"
        with contextlib.suppress(OSError):
            self._stdin.close()
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
