"""MCP elicitation: ``cancel`` leaves the call pending for another approver, ``decline`` denies.

Real SDK client (in-process transport) against the real server and approvals store; the human's
approval goes through the real ``corral approvals`` command app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from local_provider import LocalProvider, local_provider
from mcp.client import Client
from typer.testing import CliRunner

from corral.cli.approvals import app as approvals_app
from corral.mcp import Principals, build_server
from corral.policy.types import ExecConfig, FilesConfig
from corral.tools.approvals import ApprovalStore
from corral.tools.service import ToolPolicy, Tools
from corral.tools.session import ShellSession

pytestmark = pytest.mark.anyio

POLICY = ToolPolicy(exec=ExecConfig(mode="allowlist", allow=("echo *",)),
                    files=FilesConfig(approval="writes"), digest="d1", idle=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    yield from local_provider(tmp_path)


@pytest.fixture
def principals(provider: Any, corral_env: dict[str, str]) -> Iterator[Principals]:
    store = ApprovalStore()

    def factory(principal: str) -> Tools:
        return Tools(POLICY, ShellSession(provider, idle=None), store,
                     workspace=str(provider.root), principal=principal)

    p = Principals(factory)
    yield p
    p.close()


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _answer(action: str, asked: list[str]) -> Any:
    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action=action)  # type: ignore[arg-type]
    return elicit


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_cancel_leaves_the_call_pending_for_another_approver(
    principals: Principals, provider: Any, mode: str
) -> None:
    asked: list[str] = []
    call = {"path": "c.txt", "content": "after approval"}
    async with Client(build_server(principals), mode=mode,  # type: ignore[arg-type]
                      elicitation_callback=_answer("cancel", asked)) as client:
        res = await client.call_tool("write", call)
        assert asked and res.is_error
        text = _text(res)
        found = re.search(r"pending as approval ([0-9a-f]{8})", text)
        assert found is not None, text
        ident = found.group(1)
        assert f"corral approvals approve {ident}" in text and "cancelled" in text
        store = principals.tools("stdio").store
        assert store.get(ident).status == "pending"
        # Cancelling again (the client retried) still decides nothing and keeps the same id.
        again = await client.call_tool("write", call)
        assert again.is_error and f"approval {ident}" in _text(again)
        assert store.get(ident).status == "pending"
        # A server without elicitation (corral mcp --approvals cli) reports the same request.
    async with Client(build_server(principals, elicitation=False), mode=mode) as plain:  # type: ignore[arg-type]
        held = await plain.call_tool("write", call)
        assert held.is_error and f"corral approvals approve {ident}" in _text(held)
    # The human approves with the real command, then the same call runs on retry.
    approved = CliRunner().invoke(approvals_app, ["approve", ident])
    assert approved.exit_code == 0, approved.output
    async with Client(build_server(principals), mode=mode,  # type: ignore[arg-type]
                      elicitation_callback=_answer("cancel", asked)) as client:
        asked.clear()
        done = await client.call_tool("write", call)
        assert not done.is_error, _text(done)
        assert not asked  # the grant was used; nobody was asked again
    assert (Path(provider.root) / "c.txt").read_text() == "after approval"
    assert store.get(ident).status == "used"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_decline_still_denies(principals: Principals, provider: Any, mode: str) -> None:
    asked: list[str] = []
    call = {"path": "d.txt", "content": "x"}
    async with Client(build_server(principals), mode=mode,  # type: ignore[arg-type]
                      elicitation_callback=_answer("decline", asked)) as client:
        res = await client.call_tool("write", call)
        assert res.is_error and "decline" in _text(res)
        store = principals.tools("stdio").store
        [item] = store.list(include_decided=True)
        assert item.status == "denied"
        retry = await client.call_tool("write", call)
        assert retry.is_error and "denied" in _text(retry)
    assert len(asked) == 1  # a denial is remembered: the retry is not asked again
    refused = CliRunner().invoke(approvals_app, ["approve", item.id])
    assert refused.exit_code != 0
    assert not (Path(provider.root) / "d.txt").exists()
