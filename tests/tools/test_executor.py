"""The executor protocol and the tool operations, over a plain local subprocess."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_provider import LocalProvider, local_provider

from corral.tools.executor_client import ExecutorGone, ToolFailure
from corral.tools.session import ShellSession


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    yield from local_provider(tmp_path)




@pytest.fixture
def session(provider: LocalProvider) -> Any:
    sess = ShellSession(provider, idle=None)
    yield sess
    sess.close()


def test_exec_outputs_and_exit_code(session: ShellSession) -> None:
    res = session.call("exec", {"command": "echo out; echo err >&2; exit 3"})
    assert res["exit_code"] == 3 and res["stdout"] == "out\n" and res["stderr"] == "err\n"


def test_exec_truncates_with_marker(session: ShellSession) -> None:
    res = session.call("exec", {"command": "head -c 100000 /dev/zero | tr '\\0' a",
                                "max_output": 1000})
    assert res["stdout"].startswith("a" * 1000)
    assert "truncated by corral: 1000 of 100000 bytes" in res["stdout"]


def test_exec_timeout_kills_the_session(session: ShellSession, provider: LocalProvider) -> None:
    start = time.monotonic()
    res = session.call("exec", {"command": "sleep 30 & sleep 30", "timeout": 0.5})
    assert res["exit_code"] == 124 and res["timed_out"]
    assert time.monotonic() - start < 5


def test_exec_progress(session: ShellSession) -> None:
    seen: list[dict[str, Any]] = []
    session.call("exec", {"command": "sleep 1.3"}, on_progress=seen.append)
    assert seen and seen[0]["elapsed"] >= 1


def test_concurrent_calls_share_one_executor(session: ShellSession) -> None:
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: results.append(
        session.call("exec", {"command": "sleep 0.3; echo hi"}))) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["stdout"] for r in results] == ["hi\n"] * 4
    assert time.monotonic() - start < 1.2 and session.starts == 1


def test_file_ops(session: ShellSession, provider: LocalProvider) -> None:
    session.call("write", {"path": "sub/a.txt", "content": "one\ntwo\nthree\n"})
    assert (provider.root / "sub/a.txt").read_text() == "one\ntwo\nthree\n"
    res = session.call("read", {"path": "sub/a.txt", "offset": 2, "limit": 1})
    assert res["content"].startswith("two\n") and res["truncated"]
    session.call("edit", {"path": "sub/a.txt", "old_string": "two", "new_string": "2"})
    assert (provider.root / "sub/a.txt").read_text() == "one\n2\nthree\n"
    session.call("write", {"path": "b.txt", "content": "x x"})
    with pytest.raises(ToolFailure, match="occurs 2 times"):
        session.call("edit", {"path": "b.txt", "old_string": "x", "new_string": "y"})
    with pytest.raises(ToolFailure, match="not found"):
        session.call("edit", {"path": "b.txt", "old_string": "z", "new_string": "y"})
    res = session.call("glob", {"pattern": "**/*.txt"})
    assert res["matches"] == ["b.txt", "sub/a.txt"]
    res = session.call("grep", {"pattern": "thr.e"})
    assert "sub/a.txt:3:three" in res["output"]


def test_grep_pattern_is_data(session: ShellSession, provider: LocalProvider) -> None:
    (provider.root / "f.txt").write_text("$(touch pwned)\n; touch pwned2\n")
    res = session.call("grep", {"pattern": "$(touch pwned)", "fixed_strings": True})
    assert res["matched"]
    session.call("grep", {"pattern": "; touch pwned2"})
    session.call("glob", {"pattern": "$(touch pwned3)*"})
    assert not any((provider.root / n).exists() for n in ("pwned", "pwned2", "pwned3"))


def test_paths_outside_and_symlinks(session: ShellSession, provider: LocalProvider,
                                    tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    os.symlink(secret, provider.root / "link")
    os.symlink(tmp_path, provider.root / "dirlink")
    for path in ("link", "dirlink/secret.txt"):
        with pytest.raises(ToolFailure) as err:
            session.call("read", {"path": path})
        assert err.value.kind == "symlink"
        with pytest.raises(ToolFailure):
            session.call("write", {"path": path, "content": "x"})
    with pytest.raises(ToolFailure) as err:
        session.call("read", {"path": str(secret)})
    assert err.value.kind == "outside"
    assert session.call("read", {"path": str(secret), "outside_ok": True})["content"] == "s3cret\n"
    with pytest.raises(ToolFailure) as err:
        session.call("write", {"path": "../x", "content": "x", "outside_ok": True})
    assert err.value.kind == "outside_write"
    assert secret.read_text() == "s3cret\n"
    assert session.call("glob", {"pattern": "**/*.txt"})["matches"] == []


def test_dead_executor_is_replaced(session: ShellSession, provider: LocalProvider) -> None:
    session.call("exec", {"command": "true"})
    assert provider.proc is not None
    provider.proc.kill()
    provider.proc.wait()
    assert session.call("exec", {"command": "echo back"})["stdout"] == "back\n"
    assert session.starts == 2


def test_idle_recycle(provider: LocalProvider) -> None:
    sess = ShellSession(provider, idle=0.3)
    try:
        sess.call("exec", {"command": "true"})
        assert sess.running
        deadline = time.monotonic() + 3
        while provider.stops == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert provider.stops >= 1, "the idle sandbox was not recycled"
        assert not sess.running
        sess.call("exec", {"command": "true"})
        assert sess.starts == 2
    finally:
        sess.close()


def test_closed_session_refuses(provider: LocalProvider) -> None:
    sess = ShellSession(provider, idle=None)
    sess.close()
    with pytest.raises(ExecutorGone):
        sess.call("exec", {"command": "true"})


def test_read_refuses_special_files_and_bounds_lines(session: ShellSession,
                                                     provider: LocalProvider) -> None:
    os.mkfifo(provider.root / "fifo")
    with pytest.raises(ToolFailure, match="not a regular file"):
        session.call("read", {"path": "fifo"}, timeout=10)
    (provider.root / "long").write_bytes(b"x" * 300_000)
    res = session.call("read", {"path": "long", "max_bytes": 1000})
    assert res["truncated"] and len(res["content"]) < 2000
