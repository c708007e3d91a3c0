"""The quick flags on ``corral mcp`` (--allow, --ro, --rw, --memory, --timeout, --idle): a real
``corral mcp`` over stdio, driven by the SDK's client, composes them with ``-p`` exactly as
``corral run`` does (``corral.policy.quick``), and refuses a bad value at parse time.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from conftest import require_root
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CORRAL = str(Path(sys.executable).parent / "corral")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def outside() -> Iterator[int]:
    """An HTTP server on the host's loopback, reachable only through an allowing rule."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"outside-body")

        def log_message(self, *args: Any) -> None:
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def _data(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result
    assert result.structured_content is not None
    return dict(result.structured_content)


async def test_quick_flags_compose_like_corral_run(
        corral_env: dict[str, str], tmp_path: Path, outside: int) -> None:
    require_root()
    env = {**os.environ, **corral_env}
    policy = tmp_path / "open.yaml"
    policy.write_text("name: open\nexec:\n  mode: allow\n")
    ws, extra, shared = tmp_path / "ws", tmp_path / "extra", tmp_path / "shared"
    for d in (ws, extra, shared):
        d.mkdir()
    (extra / "notes.txt").write_text("read-only notes\n")
    args = ["mcp", "-p", str(policy), "--workspace", str(ws), "--ro", str(extra),
            "--rw", str(shared), "--allow", f"127.0.0.1:{outside}", "--memory", "512MiB",
            "--timeout", "10m", "--idle", "5m"]
    async with Client(StdioServerParameters(command=CORRAL, env=env, args=args),
                      mode="legacy") as client:
        res = _data(await client.call_tool("exec", {"command": f"cat {extra}/notes.txt"}))
        assert res["stdout"] == "read-only notes\n", res
        res = _data(await client.call_tool("exec", {"command": f"echo x > {extra}/w"}))
        assert res["exit_code"] != 0 and not (extra / "w").exists()  # --ro: read-only
        res = _data(await client.call_tool("exec", {"command": f"echo y > {shared}/w"}))
        assert res["exit_code"] == 0 and (shared / "w").read_text() == "y\n"
        assert (shared / "w").stat().st_uid == os.getuid()  # ID-mapped like the workspace
        url = f"http://127.0.0.1:{outside}/"
        curl = f"curl -sS -m 10 --noproxy '' {url}"
        res = _data(await client.call_tool("exec", {"command": curl}))
        assert res["stdout"] == "outside-body", res  # --allow: an inspect rule
        res = _data(await client.call_tool("fetch", {"url": "http://denied.example/x"}))
        assert res["status"] == 403 and "default deny" in res["body"]
        listed = subprocess.run([CORRAL, "sandbox", "list", "--json"], env=env,
                                capture_output=True, text=True, timeout=30, check=True)
    trail = subprocess.run([CORRAL, "audit", "list", "--type", "proxy.*", "--json"], env=env,
                           capture_output=True, text=True, timeout=30, check=True)
    assert f"--allow 127.0.0.1:{outside}" in trail.stdout  # the flag is the rule's origin
    assert "(command line)" in listed.stdout, listed.stdout  # the flags' policy is composed


BAD = [
    ("--allow", "bad:port:x"), ("--allow", "host:0"), ("--allow", ""), ("--ro", "/nonexistent/x"),
    ("--rw", "/etc/hostname"), ("--rw", ""), ("--memory", "5X"), ("--memory", "-1"),
    ("--timeout", "forever"), ("--timeout", "1y"), ("--idle", "-1"), ("--idle", "0.5.1s"),
]


def _refused(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([CORRAL, "mcp", *args], env=env, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize(("flag", "value"), BAD)
def test_a_bad_quick_flag_is_refused_at_parse_time(
        corral_env: dict[str, str], flag: str, value: str) -> None:
    line = _refused({**os.environ, **corral_env}, flag, value)
    assert flag in line, line


def test_ro_and_rw_on_one_path(corral_env: dict[str, str], tmp_path: Path) -> None:
    line = _refused({**os.environ, **corral_env}, "--ro", str(tmp_path), "--rw", str(tmp_path))
    assert "--rw" in line and "give it once" in line, line


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--allow", "--memory", "--timeout", "--idle"]),
       value=st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                     max_size=12))
def test_mcp_accepts_a_value_exactly_when_run_does(
        corral_env: dict[str, str], flag: str, value: str) -> None:
    """Differential: ``corral mcp`` refuses a quick flag's value exactly when
    ``corral.policy.quick`` (what ``corral run`` uses) does, with the same reason."""
    from corral.policy import PolicyError
    from corral.policy.quick import QuickFlags, quick_policy

    field = flag.removeprefix("--")
    given_: dict[str, Any] = {field: (value,) if field == "allow" else value}
    try:
        quick_policy(QuickFlags(**given_))
        why = None
    except PolicyError as err:
        why = err.problems[0].split(": ", 1)[1]
    # A workspace that does not exist after the flag: click runs the callbacks in the order
    # given, so a value mcp accepts reaches --workspace's refusal and nothing is served.
    line = _refused({**os.environ, **corral_env}, f"{flag}={value}", "--workspace",
                    "/nonexistent/ws")
    if why is None:
        assert "--workspace" in line, line
    else:
        # an empty value is refused for every option by the CLI before any callback
        assert flag in line and (why in line or "must not be empty" in line), (why, line)
