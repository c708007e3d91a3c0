"""End to end: the SDK's real client against `corral mcp` (stdio and streamable HTTP), every
call executed inside a real corral sandbox.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
from conftest import require_root
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

CORRAL = str(Path(sys.executable).parent / "corral")
TOKEN_A = "alice-token-0123456789abcdef"
TOKEN_B = "bob-token-0123456789abcdef00"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **corral_env}


def _policy(tmp_path: Path, *, mode: str = "allowlist", approval: str = "none",
            allow_port: int | None = None) -> Path:
    path = tmp_path / "mcp.yaml"
    allow = ["echo *", "true", "id -u", "sleep *", "cat *", "ls *", "curl *", "printf *",
             "git status", "git diff *"]
    text = (f"name: mcp-test\nexec:\n  mode: {mode}\n  allow: {json.dumps(allow)}\n"
            f"files:\n  approval: {approval}\n")
    if allow_port is not None:  # the host's loopback as an IP-literal rule (private allowed)
        text += f"egress:\n  - host: 127.0.0.1\n    ports: [{allow_port}]\n    action: inspect\n"
    path.write_text(text)
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def _stdio(env: dict[str, str], policy: Path, ws: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(command=CORRAL, env=env,
                                 args=["mcp", "-p", str(policy), "--workspace", str(ws), *extra])


def _data(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _approval_id(result: types.CallToolResult) -> str:
    assert result.is_error, "expected a held call"
    found = re.search(r"pending as approval ([0-9a-f]{8})", _text(result))
    assert found, _text(result)
    return found.group(1)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CORRAL, *args], env=env, capture_output=True, text=True, timeout=30)


def _no_sandboxes_left(env: dict[str, str]) -> None:
    root = Path(env["CORRAL_HOME"]) / "sandboxes"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p in root.glob("*") if not p.name.startswith(".")] if root.exists() else []
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"sandboxes left behind: {left}")


@pytest.fixture
def outside_server() -> Iterator[str]:
    """An HTTP server on the host's loopback: the sandbox must not reach it directly."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"outside-body")

        def log_message(self, *args: Any) -> None:
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


async def test_tools_over_stdio(env: dict[str, str], tmp_path: Path, workspace: Path,
                                outside_server: str) -> None:
    require_root()
    (tmp_path / "outside.txt").write_text("outside\n")
    os.symlink(tmp_path / "outside.txt", workspace / "escape")
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    port = int(outside_server.rsplit(":", 1)[1].strip("/"))
    policy = _policy(tmp_path, allow_port=port)
    async with Client(_stdio(env, policy, workspace), mode="legacy") as client:
        res = _data(await client.call_tool("exec", {"command": "echo hi; id -u"}))
        assert res["stdout"].split() == ["hi", "2000000000"] or (
            res["stdout"].startswith("hi\n") and res["stdout"].split()[1] != "0")
        res = _data(await client.call_tool("exec", {"command": "sleep 1.5; echo done"},
                                           progress_callback=on_progress))
        assert res["stdout"] == "done\n" and progress
        res = _data(await client.call_tool("exec", {"command": "cat nope"}))
        assert res["exit_code"] == 1 and "No such file" in res["stderr"]

        assert _data(await client.call_tool("write", {"path": "d/a.py",
                                                      "content": "x = 1\ny = 2\n"}))
        assert (workspace / "d/a.py").read_text() == "x = 1\ny = 2\n"
        assert (workspace / "d/a.py").stat().st_uid == os.getuid()  # host owner kept
        res = _data(await client.call_tool("read", {"path": "d/a.py", "offset": 2}))
        assert res["content"] == "y = 2\n"
        await client.call_tool("edit", {"path": "d/a.py", "old_string": "y = 2",
                                        "new_string": "y = 3"})
        assert (workspace / "d/a.py").read_text() == "x = 1\ny = 3\n"
        assert _data(await client.call_tool("glob", {"pattern": "**/*.py"}))["matches"] == [
            "d/a.py"]
        res = _data(await client.call_tool("grep", {"pattern": "y = \\d"}))
        assert "d/a.py:2:y = 3" in res["output"]

        refused = await client.call_tool("read", {"path": "escape"})
        assert refused.is_error and "symlink" in _text(refused)
        _approval_id(await client.call_tool("read", {"path": str(tmp_path / "outside.txt")}))
        hidden = await client.call_tool("exec", {"command": f"cat {tmp_path}/outside.txt"})
        assert "outside" not in _data(hidden)["stdout"]  # not even visible in the sandbox

        # No egress except through the proxy: the host's loopback is out of reach directly...
        fetched = await client.call_tool("fetch", {"url": outside_server, "timeout": 5})
        assert fetched.is_error and "outside-body" not in _text(fetched)
        res = _data(await client.call_tool("exec", {"command": f"curl -sS -m 5 {outside_server}"}))
        assert res["exit_code"] != 0 and "outside-body" not in res["stdout"]
        # ...through the proxy, the policy decides: an allowed rule passes, the rest is denied.
        res = _data(await client.call_tool("exec", {
            "command": f"curl -sS -m 10 --noproxy '' {outside_server}"}))
        assert res["stdout"] == "outside-body", res
        res = _data(await client.call_tool("exec", {
            "command": "curl -sS -m 10 http://denied.example/x"}))
        assert "default deny" in res["stdout"]
        res = _data(await client.call_tool("fetch", {"url": "http://denied.example/x"}))
        assert res["status"] == 403 and "default deny" in res["body"]
    _no_sandboxes_left(env)


BYPASSES = [
    "git status; curl x",
    "echo $(curl x)",
    "echo `curl x`",
    "git status\ncurl x",
    "env X=1 curl x",
    "git status > /etc/x",
    "bash -c 'curl x'",
    "git status & curl x",
    "$CMD x",
    "eval 'echo hi'",
]


async def test_bypass_attempts_are_held(env: dict[str, str], tmp_path: Path,
                                        workspace: Path) -> None:
    require_root()
    policy = tmp_path / "strict.yaml"
    policy.write_text('name: strict\nexec:\n  mode: allowlist\n  allow: ["git status", "echo *"]\n')
    marker = workspace / "ran"
    async with Client(_stdio(env, policy, workspace), mode="legacy") as client:
        for command in BYPASSES:
            held = await client.call_tool("exec", {"command": command + f"; touch {marker}"})
            _approval_id(held)
        assert not marker.exists()
        listed = _cli(env, "approvals", "list")
        assert listed.returncode == 0 and "curl x" in listed.stdout


async def test_approval_lifecycle_stdio(env: dict[str, str], tmp_path: Path,
                                        workspace: Path) -> None:
    require_root()
    policy = _policy(tmp_path, approval="writes")
    async with Client(_stdio(env, policy, workspace), mode="legacy") as client:
        args = {"path": "a.txt", "content": "one"}
        ident = _approval_id(await client.call_tool("write", args))
        assert not (workspace / "a.txt").exists()
        assert _approval_id(await client.call_tool("write", args)) == ident  # same request
        done = _cli(env, "approvals", "approve", ident, "--reason", "fine")
        assert done.returncode == 0, done.stderr
        # replayed with other arguments: not covered by the grant
        other = _approval_id(await client.call_tool("write", {"path": "a.txt",
                                                              "content": "evil"}))
        assert other != ident
        _data(await client.call_tool("write", args))
        assert (workspace / "a.txt").read_text() == "one"
        assert _approval_id(await client.call_tool("write", args)) != ident  # single use

        # denied
        assert _cli(env, "approvals", "deny", other, "--reason", "no evil").returncode == 0
        denied = await client.call_tool("write", {"path": "a.txt", "content": "evil"})
        assert denied.is_error and "denied" in _text(denied) and "no evil" in _text(denied)
        assert (workspace / "a.txt").read_text() == "one"

        # always allow this command here
        cmd = {"command": "echo $((6*7))"}
        ident = _approval_id(await client.call_tool("exec", cmd))
        assert _cli(env, "approvals", "approve", ident, "--always").returncode == 0
        assert _data(await client.call_tool("exec", cmd))["stdout"] == "42\n"
        assert _data(await client.call_tool("exec", {**cmd, "timeout": 9}))["stdout"] == "42\n"
    listed = _cli(env, "approvals", "list", "--all", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    decided = {r["id"]: r for r in rows}
    assert decided[ident]["decided_by"] and decided[other]["reason"] == "no evil"
    events = [json.loads(line) for line in
              _cli(env, "audit", "list", "--json", "-t", "approval.*", "-t", "tool.*",
                   "--limit", "0").stdout.splitlines()]
    kinds = {(e["type"], (e.get("data") or {}).get("decision")) for e in events}
    assert {("approval.request", None), ("approval.decide", "approved"),
            ("approval.decide", "denied"), ("approval.use", None),
            ("tool.call", None)} <= kinds, kinds
    reasons = {(e.get("data") or {}).get("reason") for e in events}
    assert {"fine", "no evil"} <= reasons  # why the human decided is in the audit trail
    lifecycle = [json.loads(line) for line in
                 _cli(env, "audit", "list", "--json", "-t", "sandbox.*", "-t", "exec.start",
                      "--limit", "0").stdout.splitlines()]
    # the tools sandbox's own trail, written by the shared launcher's audit adapter
    assert {"sandbox.create", "sandbox.layer", "exec.start", "sandbox.teardown"} <= {
        e["type"] for e in lifecycle}
    assert any((e.get("data") or {}).get("via") == "mcp" for e in lifecycle)
    assert _cli(env, "audit", "verify").returncode == 0


async def test_approval_expires(env: dict[str, str], tmp_path: Path, workspace: Path) -> None:
    require_root()
    policy = _policy(tmp_path, approval="writes")
    async with Client(_stdio(env, policy, workspace, "--approval-ttl", "2"),
                      mode="legacy") as client:
        late = _approval_id(await client.call_tool("write", {"path": "b.txt", "content": "b"}))
        time.sleep(2.3)
        refused = _cli(env, "approvals", "approve", late)
        assert refused.returncode != 0 and "expired" in refused.stderr
        again = _approval_id(await client.call_tool("write", {"path": "b.txt", "content": "b"}))
        assert again != late and not (workspace / "b.txt").exists()
    listed = _cli(env, "approvals", "list", "--all", "--json")
    rows = {json.loads(line)["id"]: json.loads(line) for line in listed.stdout.splitlines()}
    assert rows[late]["status"] == "expired" and rows[late]["decided_by"] == "timeout"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_elicitation_stdio(env: dict[str, str], tmp_path: Path, workspace: Path,
                                 mode: str) -> None:
    require_root()
    asked: list[str] = []

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True, "reason": "ok"})

    policy = _policy(tmp_path, approval="writes")
    async with Client(_stdio(env, policy, workspace), mode=mode,  # type: ignore[arg-type]
                      elicitation_callback=elicit) as client:
        res = await client.call_tool("write", {"path": "e.txt", "content": "elicited"})
        assert not res.is_error, _text(res)
    assert asked and "e.txt" in asked[0]
    assert (workspace / "e.txt").read_text() == "elicited"


@asynccontextmanager
async def _http_client(url: str, token: str, **kwargs: Any) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                              timeout=httpx2.Timeout(60.0))
    async with http, Client(streamable_http_client(url, http_client=http), **kwargs) as client:
        yield client


@pytest.fixture
def http_server(env: dict[str, str], tmp_path: Path, workspace: Path) -> Iterator[str]:
    require_root()
    policy = _policy(tmp_path, mode="allow", approval="writes")
    proc = subprocess.Popen(
        [CORRAL, "mcp", "-p", str(policy), "--workspace", str(workspace), "--http",
         "127.0.0.1:0", "--token", f"alice={TOKEN_A}", "--token", f"bob={TOKEN_B}"],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert proc.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                line = proc.stderr.readline()
                found = re.search(r"serving (http://\S+)", line)
                url = found.group(1) if found else None
                assert line or proc.poll() is None, "corral mcp exited"
        assert url, "corral mcp did not announce its URL"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _no_sandboxes_left(env)


async def test_http_auth_origin_and_principals(http_server: str, env: dict[str, str]) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    plain = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    with httpx.Client(timeout=10) as http:
        assert http.post(http_server, json=body, headers=plain).status_code == 401
        wrong = {**plain, "authorization": "Bearer not-the-token-at-all"}
        assert http.post(http_server, json=body, headers=wrong).status_code == 401
        evil = {**plain, "authorization": f"Bearer {TOKEN_A}", "origin": "https://evil.example"}
        assert http.post(http_server, json=body, headers=evil).status_code == 403
    async with _http_client(http_server, TOKEN_A) as alice:
        res = _data(await alice.call_tool("exec", {"command": "echo a > /tmp/mine; echo ok"}))
        assert res["stdout"] == "ok\n"
        async with _http_client(http_server, TOKEN_B) as bob:
            res = _data(await bob.call_tool("exec", {"command": "cat /tmp/mine || echo none"}))
            assert res["stdout"] == "none\n"  # bob has his own sandbox
            listed = _cli(env, "sandbox", "list")
            assert listed.stdout.count("mcp-test") == 2, listed.stdout  # one per principal
        res = _data(await alice.call_tool("exec", {"command": "cat /tmp/mine"}))
        assert res["stdout"] == "a\n"  # alice's sandbox is reused
    with pytest.raises((httpx2.HTTPStatusError, MCPError, ExceptionGroup)):  # 401 on connect
        async with _http_client(http_server, "wrong-token-0123456789") as nobody:
            await nobody.call_tool("exec", {"command": "true"})


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_http_approvals(http_server: str, workspace: Path, mode: str) -> None:
    """Over HTTP: a client with elicitation is asked; one without gets a pending approval."""
    asked: list[str] = []

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    async with _http_client(http_server, TOKEN_A, mode=mode, elicitation_callback=elicit) as a:
        res = await a.call_tool("write", {"path": f"h-{mode}.txt", "content": "via http"})
        assert not res.is_error, _text(res)
    assert asked and (workspace / f"h-{mode}.txt").read_text() == "via http"
    async with _http_client(http_server, TOKEN_B, mode=mode) as b:
        _approval_id(await b.call_tool("write", {"path": f"b-{mode}.txt", "content": "x"}))
    assert not (workspace / f"b-{mode}.txt").exists()
