"""Server budgets under ``corral mcp --project`` (issue 15): a real ``corral mcp --project shop
--agent bot`` driven by the MCP SDK's stdio client, its ``exec`` tool running curl through the
tools sandbox's proxy against the fake provider (TLS, a test network namespace) under a metered
project policy, with an agent budget on a real ``corral server`` process (SQLite and
PostgreSQL). The sandbox's proxy reserves and settles on the server under the sandbox's run:
two requests fit and are settled, the third (whose worst case no longer fits) gets the
provider-shaped 429 naming the agent's budget (``agent shop/bot``); the spend rows carry the
run and the agent and ``corral spend --project shop --by agent`` shows them. With the server
stopped, a metered request is refused with a 503 naming the cause: never served on local
budgets alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from corral.spend import estimate, load_prices
from tests.agents.provider import Provider, provider  # noqa: F401 (a fixture)
from tests.conftest import require_root, require_tools
from tests.server.conftest import VENV_BIN, Served, cli
from tests.server.test_launcher import Server, corral_server  # noqa: F401 (a fixture)
from tests.server.test_spend_launcher import metered_shop

pytestmark = [pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(300)]

CORRAL = str(VENV_BIN / "corral")
MODEL = "claude-haiku-4-5"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _policy(p: Provider) -> str:
    pem = p.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: metered-mcp
exec:
  mode: allowlist
  allow: ["curl *"]
egress:
  - host: {p.ip}
    ports: [443]
    action: inspect
    credential: anthropic
    meter: anthropic
    tls_ca: |
      {pem}
credentials:
  anthropic: {{secret: store:anthropic, header: x-api-key, format: "{{secret}}",
               env: ANTHROPIC_API_KEY}}
"""


def _body(max_tokens: int) -> bytes:
    return json.dumps({"model": MODEL, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def _curl(p: Provider, body: str) -> str:
    # no key: the proxy injects the real one (the provider answers 401 to anything else)
    return (f"curl -sS -m 60 -w '\\n%{{http_code}}' -H 'content-type: application/json' "
            f"-H 'anthropic-version: 2023-06-01' --data-binary @/workspace/{body} "
            f"https://{p.ip}/v1/messages")


async def _post(client: Client, p: Provider, body: str) -> tuple[int, str]:
    res = await client.call_tool("exec", {"command": _curl(p, body)})
    text = " ".join(c.text for c in res.content if isinstance(c, types.TextContent))
    assert not res.is_error and res.structured_content is not None, text
    out = str(res.structured_content["stdout"])
    answer, _, status = out.rpartition("\n")
    assert status.isdigit(), res.structured_content
    return int(status), answer


def _spend_rows(db_url: str) -> list[tuple[str, str | None, str, int | None]]:
    """(run, agent, state, cost) of every spend row on the server's database."""
    from sqlalchemy import text

    from corral.server.db import Database

    db = Database(db_url)
    try:
        with db.engine.connect() as con:
            return [tuple(r) for r in con.execute(text(  # type: ignore[misc]
                "SELECT s.run_id, a.name, s.state, s.cost_micro_usd FROM spend s "
                "LEFT JOIN agents a ON a.id = s.agent_id ORDER BY s.id"))]
    finally:
        db.dispose()


def _settled(db_url: str, n: int) -> list[tuple[str, str | None, str, int | None]]:
    deadline = time.monotonic() + 30
    while True:  # settlements are queued to the proxy's worker thread
        rows = _spend_rows(db_url)
        if len(rows) >= n and all(r[2] == "settled" for r in rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


async def test_mcp_tools_sandbox_reserves_on_the_server(
        corral_server: Server, provider: Provider,  # noqa: F811
        corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    provider.hold.touch()  # no response is held in this test
    env = metered_shop(corral_server, provider, corral_env, tmp_path, _policy(provider))
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "small.json").write_bytes(_body(1000))
    (ws / "large.json").write_bytes(_body(2000))
    for path in [ws, *ws.rglob("*")]:
        os.chown(path, 0, 0)
    est = estimate(load_prices(), "anthropic", "anthropic.messages", _body(1000))
    # two small requests fit (each settles far below its worst case); a large one no more
    cli("budget", "set", "--project", "shop", "--agent", "bot", "--amount",
        f"{est.cost * 1.5 / 1_000_000:.6f}", "--period", "day", env=env)

    params = StdioServerParameters(command=CORRAL, env=env, args=[
        "mcp", "--project", "shop", "--agent", "bot", "--workspace", str(ws)])
    async with Client(params, mode="legacy") as client:
        with anyio.fail_after(120):
            first = await _post(client, provider, "small.json")
            second = await _post(client, provider, "small.json")
            third = await _post(client, provider, "large.json")
        assert first[0] == 200 and second[0] == 200, (first, second)
        status, answer = third
        assert status == 429, third
        error = json.loads(answer)["error"]
        assert error["type"] == "rate_limit_error" and "agent shop/bot budget" in error["message"]
        assert "per day" in error["message"], error

        rows = _settled(corral_server.db_url, 2)
        served = Served(corral_server.url, corral_server.db_url, Path())
        with served.client(env["CORRAL_TOKEN"]) as api:
            runs = api.get("/projects/shop/runs").json()["runs"]
        (run,) = runs  # the principal's tools sandbox, live
        assert [(r[0], r[1], r[2]) for r in rows] == [(run["id"], "bot", "settled")] * 2, rows
        assert all(0 < (r[3] or 0) < est.cost for r in rows), rows
        by_agent: dict[str, Any] = json.loads(cli(
            "spend", "--project", "shop", "--by", "agent", "--json", env=env).stdout)
        (row,) = by_agent["rows"]
        assert row["agent"] == "bot" and row["requests"] == 2, by_agent
        assert row["cost_usd"] == pytest.approx(sum(r[3] or 0 for r in rows) / 1_000_000)

        # The server goes away: the request is refused, never served on local budgets alone.
        corral_server.stop()
        with anyio.fail_after(120):
            status, answer = await _post(client, provider, "small.json")
        assert status == 503, (status, answer)
        assert "could not reserve" in json.loads(answer)["error"]["message"], answer

