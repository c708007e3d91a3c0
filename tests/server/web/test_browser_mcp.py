"""A held ``corral mcp --project`` call decided in the web UI, end to end: a real ``corral mcp``
process (driven by the official MCP SDK client) asks the server about a write; an admin signed
in through the real OpenID provider in Chromium sees it arrive on the Approvals page without a
reload (full arguments, the rule, the agent, who asked), and each button reaches the held call:
Approve once (the tool result arrives), Approve always (the identical call later passes
without being held), Deny with a reason (the client gets the refusal with that reason).
With CORRAL_UI_SCREENSHOTS=DIR the page is saved as PNG at each step."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import require_root
from tests.server.conftest import VENV_BIN
from tests.server.sso.conftest import chromium
from tests.server.web.conftest import Ui

pytestmark = [pytest.mark.root, pytest.mark.anyio, pytest.mark.timeout(300)]

SHOTS = os.environ.get("CORRAL_UI_SCREENSHOTS")
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


def _token(ui: Ui, name: str, role: str, team: str | None) -> str:
    from corral.server.local import create_token

    db = ui.db()
    try:
        return create_token(db, name=name, role=role, team=team, ttl=dt.timedelta(hours=1))
    finally:
        db.dispose()


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _pending(ui: Ui, owner: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=ui.url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {owner}"}) as c:
        return list(c.get("/projects/shop/approvals").json()["approvals"])


async def _shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def test_held_mcp_call_decided_in_the_browser(ui_sqlite: Ui, corral_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    require_root()
    ui = ui_sqlite
    owner = _token(ui, "owner", "owner", None)
    with httpx.Client(base_url=ui.url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {owner}"}) as c:
        resp = c.post("/projects/shop/policies", json={"filename": "p.yaml", "text": POLICY})
        assert resp.status_code == 201, resp.text
    ws = tmp_path / "ws"
    ws.mkdir()
    member = _token(ui, "launcher", "member", "web")
    env = {**os.environ, **corral_env, "CORRAL_SERVER": ui.url, "CORRAL_TOKEN": member,
           "CORRAL_HEARTBEAT_S": "0.5"}
    params = StdioServerParameters(command=str(VENV_BIN / "corral"), env=env, args=[
        "mcp", "--project", "shop", "--agent", "claude-code", "--workspace", str(ws)])

    async with async_playwright() as p, Client(params, mode="legacy") as client:
        browser = await p.chromium.launch(executable_path=chromium(), headless=True,
                                          args=["--no-sandbox"])
        page = await (await browser.new_context(viewport={"width": 1280, "height": 900})
                      ).new_page()
        await page.goto(ui.url + "/approvals")
        await page.fill("input[name=login]", "alice")
        await page.fill("input[name=password]", "x")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#queue-empty")
        await anyio.sleep(0.5)  # the EventSource connects (the queue is pushed from then on)

        async def held(tool_args: dict[str, Any], decide: Any) -> types.CallToolResult:
            """Call write (held on the server); decide in the page once it shows up there."""
            out: list[types.CallToolResult] = []

            async def call() -> None:
                out.append(await client.call_tool("write", tool_args))

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                item = await page.wait_for_selector("#queue li.approval", timeout=60_000)
                assert item is not None and not out, "the call returned before any decision"
                ident = (await item.get_attribute("id") or "")[2:]
                text = await item.inner_text()
                # What a decider needs: the full arguments, the rule, the agent, who asked.
                shown = json.loads(await page.inner_text(f"#a-{ident} pre.args"))
                assert shown["content"] == tool_args["content"], shown
                assert shown["path"] == tool_args["path"], shown
                assert "write" in text and "agent claude-code" in text, text
                assert "asked by token:launcher" in text, text
                rule = await page.inner_text(f"#a-{ident} .rule")
                assert "Rule: " in rule and "none named" not in rule, rule
                await decide(ident)
                # The decision's notice, unless the queue pushed over SSE (the call decided,
                # so no longer pending) replaced the item first: a loaded machine's race.
                await page.locator(f"#r-{ident} .notice.ok").or_(
                    page.locator("#queue-empty")).wait_for(timeout=30_000)
                await _shot(page, f"approvals-mcp-{decide.__name__}-done")
                # The decided call leaves the queue when it is pushed again.
                await page.wait_for_selector(f"#a-{ident}", state="detached", timeout=30_000)
            return out[0]

        # Approve once: the tool result arrives, the file is written.
        async def approve(ident: str) -> None:
            assert not (ws / "a.txt").exists()
            await _shot(page, "approvals-mcp-held")
            await page.click(f"#approve-{ident}")

        res = await held({"path": "a.txt", "content": "one\n"}, approve)
        assert not res.is_error, _text(res)
        assert (ws / "a.txt").read_text() == "one\n"
        await _shot(page, "approvals-mcp-approved")

        # Approve always: later identical calls pass unasked; other content is held again.
        args = {"path": "c.txt", "content": "three\n"}

        async def always(ident: str) -> None:
            await page.fill(f"#reason-{ident}", "generated file, fine to rewrite")
            await page.click(f"#always-{ident}")

        res = await held(args, always)
        assert not res.is_error and (ws / "c.txt").read_text() == "three\n", _text(res)
        (ws / "c.txt").unlink()
        with anyio.fail_after(30):
            res = await client.call_tool("write", args)
        assert not res.is_error and (ws / "c.txt").read_text() == "three\n", _text(res)
        assert _pending(ui, owner) == []

        # Deny with a reason: the client gets the refusal and the reason; nothing written.
        async def deny(ident: str) -> None:
            await page.fill(f"#reason-{ident}", "not in this sprint")
            await _shot(page, "approvals-mcp-deny")
            await page.click(f"#deny-{ident}")

        res = await held({"path": "c.txt", "content": "four\n"}, deny)
        assert res.is_error and "denied" in _text(res), _text(res)
        assert "not in this sprint" in _text(res), _text(res)
        assert (ws / "c.txt").read_text() == "three\n"
        await page.wait_for_selector("#queue-empty", timeout=10_000)
        await _shot(page, "approvals-mcp-after")

        # The standing approval is listed; revoked in the page, the same call is held again.
        await page.reload()
        row = await page.wait_for_selector("#standing tbody tr", timeout=10_000)
        assert row is not None and "three" in await row.inner_text()
        await _shot(page, "approvals-standing")
        page.once("dialog", lambda dialog: dialog.accept())  # hx-confirm
        await page.click("#standing button.danger")
        await page.wait_for_selector("#standing .notice.ok", timeout=30_000)
        await _shot(page, "approvals-standing-revoked")
        await page.reload()
        await page.wait_for_selector("#standing-empty", timeout=10_000)
        await anyio.sleep(0.5)  # the EventSource connects again

        async def deny_again(ident: str) -> None:
            await page.click(f"#deny-{ident}")

        res = await held(args, deny_again)
        assert res.is_error and "denied" in _text(res), _text(res)
        await browser.close()

    with httpx.Client(base_url=ui.url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {owner}"}) as c:
        decided = c.get("/projects/shop/approvals?all=true").json()["approvals"]
    assert [(a["status"], a["decided_by"]) for a in decided] == [
        ("approved", "alice@example.com"), ("approved", "alice@example.com"),
        ("approved", decided[2]["decided_by"]), ("denied", "alice@example.com"),
        ("denied", "alice@example.com")], decided
    assert decided[1]["always"] and "always" in decided[2]["decided_by"]
    assert decided[1]["reason"] == "generated file, fine to rewrite"
    assert decided[3]["reason"] == "not in this sprint"
