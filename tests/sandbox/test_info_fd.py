"""bwrap's info fd, read from signal handlers (``Sandbox.agent_pid``): bwrap writes its JSON in
several writes and the command may run before the last one, so a read must neither block nor
lose a partial answer (a lost one left every later SIGINT/SIGTERM/SIGHUP unforwarded, and the
next read blocked the launcher for good)."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

from corral.sandbox.launch import Sandbox


def _reader() -> SimpleNamespace:
    return SimpleNamespace(_info_read={}, _child_pids={})


def test_the_pid_is_read_from_the_first_write_and_kept() -> None:
    r, w = os.pipe()
    try:
        state = _reader()
        read = Sandbox._info_child_pid
        assert read(state, 1, r) is None  # nothing written yet: no wait
        os.write(w, b'{\n    "child-pid": 4242')  # bwrap's first write
        assert read(state, 1, r) == 4242
        os.write(w, b',\n    "cgroup-namespace": 4026531835,\n    "ipc-namespace": 1\n}\n')
        assert read(state, 1, r) == 4242 and state._child_pids == {1: 4242}
    finally:
        os.close(r)
        os.close(w)


def test_a_read_never_blocks_on_a_silent_fd() -> None:
    r, w = os.pipe()
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(
        Sandbox._info_child_pid(_reader(), 1, r)), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(5)
    try:
        assert done == [None] and time.monotonic() - started < 5
    finally:
        os.close(w)
        thread.join(5)
        os.close(r)
