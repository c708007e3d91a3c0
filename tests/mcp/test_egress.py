"""Egress through the MCP tools: the real sandbox and the real proxy, the SDK's in-process client.

``corral mcp`` (tests/mcp/test_e2e.py) cannot be told to resolve a test name to the host's
loopback; here the same server, sandbox and proxy are assembled in-process with the proxy's
``resolve_overrides``, so ``fetch`` of an allowed *name* can reach a server the test owns.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from conftest import require_root
from mcp.client import Client
from tlsutil import make_ca, server_context

from corral.mcp import Principals, build_server
from corral.policy import resolve
from corral.runtime.egress import proxied_opener
from corral.sandbox import SandboxSpec
from corral.tools.approvals import ApprovalStore
from corral.tools.provision import SandboxProvider
from corral.tools.service import ToolPolicy, Tools
from corral.tools.session import ShellSession

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"upstream says hi " + self.headers.get("Host", "").encode())

        def log_message(self, *args: Any) -> None:
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on loopback for allowed.test: (port, its CA file)."""
    ca, cert, key = make_ca(tmp_path, ["allowed.test"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"tls upstream says hi")

        def log_message(self, *args: Any) -> None:
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = server_context(cert, key).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], ca
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def principals(upstream: int, tls_upstream: tuple[int, Path], tmp_path: Path,
               corral_env: dict[str, str]) -> Iterator[Principals]:
    require_root()
    policy = tmp_path / "egress.yaml"
    tls_port, tls_ca = tls_upstream
    policy.write_text(
        "name: egress-test\nexec:\n  mode: allow\negress:\n"
        f"  - host: allowed.test\n    ports: [{upstream}]\n    action: inspect\n"
        "    allow_private: true\n"
        f"  - host: allowed.test\n    ports: [{tls_port}]\n    action: inspect\n"
        f"    allow_private: true\n    tls_ca: {tls_ca}\n"
        f"  - host: blocked.test\n    action: deny\n    reason: not for agents\n")
    rp = resolve([str(policy)], use_cache=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    overrides = {name: ["127.0.0.1"] for name in ("allowed.test", "other.test", "blocked.test")}

    def factory(principal: str) -> Tools:
        spec = SandboxSpec(policies=tuple(rp.names), limits=rp.limits, files=rp.files,
                           workspace=ws)
        provider = SandboxProvider(spec, opener=proxied_opener(rp, resolve_overrides=overrides))
        return Tools(ToolPolicy.from_resolved(rp), ShellSession(provider, idle=None),
                     ApprovalStore(), workspace=str(ws), principal=principal)

    p = Principals(factory)
    yield p
    p.close()


def _data(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


async def test_fetch_and_curl_follow_the_egress_policy(principals: Principals,
                                                       upstream: int) -> None:
    async with Client(build_server(principals)) as client:
        ok = _data(await client.call_tool("fetch", {"url": f"http://allowed.test:{upstream}/"}))
        assert ok["status"] == 200 and ok["body"].startswith("upstream says hi allowed.test")
        denied = _data(await client.call_tool("fetch", {"url": f"http://other.test:{upstream}/"}))
        assert denied["status"] == 403 and "default deny" in denied["body"]
        blocked = _data(await client.call_tool("fetch", {"url": "http://blocked.test/"}))
        assert blocked["status"] == 403 and "not for agents" in blocked["body"]
        res = _data(await client.call_tool("exec", {
            "command": f"curl -sS -m 10 http://allowed.test:{upstream}/; echo; "
                       f"curl -sS -m 10 http://other.test:{upstream}/"}))
        assert res["stdout"].startswith("upstream says hi allowed.test")
        assert "default deny" in res["stdout"]


async def test_a_denied_https_fetch_names_the_rule(principals: Principals,
                                                   tls_upstream: tuple[int, Path]) -> None:
    """A refused CONNECT's 403 body (which rule, what to change) reaches the agent, as for
    plain HTTP: urllib's own tunnel reports only "Tunnel connection failed: 403"."""
    async with Client(build_server(principals)) as client:
        ok = _data(await client.call_tool(
            "fetch", {"url": f"https://allowed.test:{tls_upstream[0]}/"}))
        assert ok["status"] == 200 and ok["body"] == "tls upstream says hi"
        blocked = _data(await client.call_tool("fetch", {"url": "https://blocked.test/x"}))
        assert blocked["status"] == 403, blocked
        assert "not for agents" in blocked["body"] and "egress.yaml:" in blocked["body"]
        denied = _data(await client.call_tool("fetch", {"url": "https://other.test/"}))
        assert denied["status"] == 403 and "default deny" in denied["body"], denied
        assert "Tunnel connection failed" not in str(denied)


def test_idle_recycle_with_the_real_sandbox(tmp_path: Path, corral_env: dict[str, str]) -> None:
    """After ``idle`` without calls the sandbox (and proxy) go; the next call builds a fresh
    one; a host-dir workspace survives, the sandbox's /tmp does not."""
    require_root()
    rp = resolve([], use_cache=False)
    ws = tmp_path / "ws"
    ws.mkdir()
    spec = SandboxSpec(limits=rp.limits, files=rp.files, workspace=ws)
    session = ShellSession(SandboxProvider(spec, opener=proxied_opener(rp)), idle=0.5)
    registry = Path(corral_env["CORRAL_HOME"]) / "sandboxes"
    try:
        session.call("exec", {"command": "echo kept > kept.txt; echo gone > /tmp/gone"})
        assert list(registry.glob("*.json"))
        deadline = time.monotonic() + 10
        while list(registry.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(registry.glob("*.json")), "the idle sandbox was not torn down"
        res = session.call("exec", {"command": "cat kept.txt; cat /tmp/gone || echo none"})
        assert res["stdout"] == "kept\nnone\n" and session.starts == 2
    finally:
        session.close()
    assert not list(registry.glob("*.json"))
