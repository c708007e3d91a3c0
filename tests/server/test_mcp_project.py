"""``corral mcp --project`` against a real ``corral server`` process, driven by the official MCP
SDK client: the project's policy served, each tools sandbox a run of the project, a held call
approved on the server (API and CLI) and its tool result arriving, a decline denying, "approve
always" letting the identical call through without asking, the launcher's own token unable to
decide; over ``--http`` server-issued tokens as bearer tokens, each caller's identity on its
run, its tool-call events and its approvals; unknown, revoked and other-team tokens refused."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import require_root
from tests.server.conftest import VENV_BIN, cli

pytestmark = [pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(300)]

CORRAL = str(VENV_BIN / "corral")
POLICY = """name: shop-mcp
exec:
  mode: allowlist
  allow: ["echo *", "true"]
files:
  approval: writes
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Plane:
    """A real ``corral server`` with team web (project shop) and team other."""

    def __init__(self, url: str, db_url: str) -> None:
        self.url, self.db_url = url, db_url

    def token(self, name: str, role: str, team: str | None) -> str:
        from corral.server.db import Database
        from corral.server.local import create_token

        db = Database(self.db_url)
        try:
            return create_token(db, name=name, role=role, team=team, ttl=dt.timedelta(days=1))
        finally:
            db.dispose()

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def plane(spawn_server: Callable[..., tuple[str, Any]], db_url: str) -> Plane:
    url, _proc = spawn_server(db_url)
    p = Plane(url, db_url)
    p.owner = p.token("owner", "owner", None)  # type: ignore[attr-defined]
    with p.api(p.owner) as c:  # type: ignore[attr-defined]
        for team, project in (("web", "shop"), ("other", "elsewhere")):
            assert c.post("/teams", json={"name": team}).status_code == 201
            assert c.post(f"/teams/{team}/projects", json={"name": project}).status_code == 201
        resp = c.post("/projects/shop/policies", json={"filename": "p.yaml", "text": POLICY})
        assert resp.status_code == 201, resp.text
    p.admin = p.token("web-admin", "admin", "web")  # type: ignore[attr-defined]
    return p


@pytest.fixture
def env(corral_env: dict[str, str], plane: Plane) -> dict[str, str]:
    return {**os.environ, **corral_env, "CORRAL_SERVER": plane.url,
            "CORRAL_HEARTBEAT_S": "0.5"}


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _pending(plane: Plane, timeout: float = 60) -> dict[str, Any]:
    """The one call held on the server for project shop, once it is there."""
    deadline = time.monotonic() + timeout
    with plane.api(plane.admin) as c:  # type: ignore[attr-defined]
        while True:
            held = c.get("/projects/shop/approvals").json()["approvals"]
            if held:
                assert len(held) == 1, held
                return dict(held[0])
            assert time.monotonic() < deadline, "no call was held on the server"
            time.sleep(0.1)


async def _held_then(plane: Plane, call: Callable[[], Any],
                     decide: Callable[[dict[str, Any]], None]) -> Any:
    """Start ``call`` (which is held), decide it with ``decide`` once held, return its result."""
    out: list[Any] = []

    async def run() -> None:
        out.append(await call())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        held = await anyio.to_thread.run_sync(_pending, plane)
        assert not out, "the held call returned before any decision"
        await anyio.to_thread.run_sync(decide, held)
    return out[0]


def _events(plane: Plane, **query: str) -> list[dict[str, Any]]:
    with plane.api(plane.owner) as c:  # type: ignore[attr-defined]
        return list(c.get("/projects/shop/audit", params={"limit": "5000", **query})
                    .json()["events"])


def _wait_for(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


async def test_stdio_held_call_decided_on_the_server(plane: Plane, env: dict[str, str],
                                                     tmp_path: Path) -> None:
    require_root()
    ws = tmp_path / "ws"
    ws.mkdir()
    member = plane.token("launcher", "member", "web")
    params = StdioServerParameters(command=CORRAL, env={**env, "CORRAL_TOKEN": member},
                                   args=["mcp", "--project", "shop", "--workspace", str(ws)])
    async with Client(params, mode="legacy") as client:
        # Not needing approval: runs at once, in a sandbox that is a live run of the project.
        res = await client.call_tool("exec", {"command": "echo hi"})
        assert not res.is_error and res.structured_content["stdout"] == "hi\n", _text(res)
        with plane.api(plane.owner) as c:  # type: ignore[attr-defined]
            runs = c.get("/projects/shop/runs").json()["runs"]
        assert len(runs) == 1 and runs[0]["human"] == "token:launcher", runs

        def approve(held: dict[str, Any]) -> None:
            assert held["tool"] == "write" and held["args"]["content"] == "one\n"
            path = f"/projects/shop/approvals/{held['id']}/approve"
            with plane.api(member) as c:  # the launcher's own token (a member) cannot decide
                assert c.post(path, json={}).status_code == 403
            assert not (ws / "a.txt").exists()
            with plane.api(plane.admin) as c:  # type: ignore[attr-defined]
                resp = c.post(path, json={"reason": "fine"})
                assert resp.status_code == 200, resp.text

        res = await _held_then(plane, lambda: client.call_tool(
            "write", {"path": "a.txt", "content": "one\n"}), approve)
        assert not res.is_error, _text(res)
        assert (ws / "a.txt").read_text() == "one\n"

        def deny(held: dict[str, Any]) -> None:
            with plane.api(plane.admin) as c:  # type: ignore[attr-defined]
                resp = c.post(f"/projects/shop/approvals/{held['id']}/deny",
                              json={"reason": "not that file"})
                assert resp.status_code == 200, resp.text

        res = await _held_then(plane, lambda: client.call_tool(
            "write", {"path": "b.txt", "content": "two\n"}), deny)
        assert res.is_error and "denied" in _text(res) and "not that file" in _text(res)
        assert not (ws / "b.txt").exists()

        def always(held: dict[str, Any]) -> None:  # through the CLI, as a human would
            done = cli("approvals", "approve", "--always", "--project", "shop", held["id"],
                       env={"CORRAL_SERVER": plane.url, "CORRAL_TOKEN": plane.admin})  # type: ignore[attr-defined]
            assert "always" in done.stdout, done.stdout

        args = {"path": "c.txt", "content": "three\n"}
        res = await _held_then(plane, lambda: client.call_tool("write", args), always)
        assert not res.is_error and (ws / "c.txt").read_text() == "three\n"
        (ws / "c.txt").unlink()
        # The identical call again: approved by the standing approval, nobody asked.
        with anyio.fail_after(30):
            res = await client.call_tool("write", args)
        assert not res.is_error and (ws / "c.txt").read_text() == "three\n", _text(res)
        # Other arguments are not covered: held again.
        def deny_quietly(held: dict[str, Any]) -> None:
            assert held["args"]["content"] == "four\n"
            deny(held)

        res = await _held_then(plane, lambda: client.call_tool(
            "write", {"path": "c.txt", "content": "four\n"}), deny_quietly)
        assert res.is_error
    with plane.api(plane.owner) as c:  # type: ignore[attr-defined]
        decided = c.get("/projects/shop/approvals?all=true").json()["approvals"]
    assert [a["status"] for a in decided] == ["approved", "denied", "approved", "approved",
                                              "denied"]
    assert decided[2]["always"] and "always" in decided[3]["decided_by"]
    # The run ended on the server, its trail shipped: the tool calls and the decisions.
    ended = _wait_for(lambda: [r for r in plane.api(plane.owner).get(  # type: ignore[attr-defined]
        "/projects/shop/runs?all=true").json()["runs"] if r["status"] != "running"])
    events = _events(plane, run=ended[0]["id"])
    calls = [e["data"] for e in events if e["type"] == "tool.call"]
    assert [c["tool"] for c in calls] == ["exec", "write", "write", "write"], calls
    assert {e["data"]["decision"] for e in events if e["type"] == "approval.decide"} == {
        "approved", "denied"}
    with plane.api(plane.owner) as c:  # type: ignore[attr-defined]
        assert c.get("/projects/shop/audit/verify").json()["ok"] is True


def _serve_http(env: dict[str, str], ws: Path, token: str) -> Iterator[str]:
    proc = subprocess.Popen([CORRAL, "mcp", "--project", "shop", "--workspace", str(ws),
                             "--http", "127.0.0.1:0"], env={**env, "CORRAL_TOKEN": token},
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while True:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "corral mcp ended"
            found = re.search(r"serving (http://\S+/mcp)", line)
            if found:
                yield found.group(1)
                break
            assert time.monotonic() < deadline
    finally:
        proc.terminate()
        proc.wait(30)


async def test_http_callers_are_server_users(plane: Plane, env: dict[str, str],
                                             tmp_path: Path) -> None:
    require_root()
    ws = tmp_path / "ws"
    ws.mkdir()
    launcher = plane.token("mcp-host", "member", "web")
    alice = plane.token("alice", "member", "web")
    outsider = plane.token("mallory", "admin", "other")
    served = _serve_http(env, ws, launcher)
    url = next(served)
    try:
        for bad in (None, "corral_" + "x" * 43, outsider):
            headers = {"Authorization": f"Bearer {bad}"} if bad else {}
            resp = httpx.post(url, headers=headers, json={})
            assert resp.status_code == 401, (bad, resp.status_code)
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {alice}"}, timeout=120)
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            res = await client.call_tool("exec", {"command": "echo from-alice"})
            assert not res.is_error, _text(res)

            def approve(held: dict[str, Any]) -> None:
                assert held["caller"] == "token:alice" and held["human"] == "token:alice"
                with plane.api(plane.admin) as c:  # type: ignore[attr-defined]
                    assert c.post(f"/projects/shop/approvals/{held['id']}/approve",
                                  json={}).status_code == 200

            res = await _held_then(plane, lambda: client.call_tool(
                "write", {"path": "w.txt", "content": "alice\n"}), approve)
            assert not res.is_error and (ws / "w.txt").read_text() == "alice\n"
            with plane.api(plane.owner) as c:  # type: ignore[attr-defined]
                runs = c.get("/projects/shop/runs").json()["runs"]
            assert [r["human"] for r in runs] == ["token:alice"]
            calls = _wait_for(lambda: [e for e in _events(plane, human="token:alice")
                                       if e["type"] == "tool.call"
                                       and e["data"]["tool"] == "write"])
            assert calls[0]["data"]["principal"] == "token:alice"
    finally:
        next(served, None)
