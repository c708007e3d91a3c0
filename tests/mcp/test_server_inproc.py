"""The MCP layer over the SDK's in-process client: approval channels in both protocol eras.

The executor runs as a local subprocess here (conftest); tests/mcp/test_e2e.py runs the same
flows through ``corral mcp`` and the real sandbox.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from local_provider import LocalProvider, local_provider
from mcp.client import Client

from corral.mcp import Principals, build_server
from corral.policy.types import ExecConfig, FilesConfig
from corral.tools.approvals import ApprovalStore
from corral.tools.service import ToolPolicy, Tools
from corral.tools.session import ShellSession

pytestmark = pytest.mark.anyio

POLICY = ToolPolicy(exec=ExecConfig(mode="allowlist", allow=("echo *", "true")),
                    files=FilesConfig(approval="writes"), digest="d1", idle=None)

@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    yield from local_provider(tmp_path)



@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def principals(provider: Any, corral_env: dict[str, str]) -> Iterator[Principals]:
    store = ApprovalStore()

    def factory(principal: str) -> Tools:
        return Tools(POLICY, ShellSession(provider, idle=None), store,
                     workspace=str(provider.root), principal=principal)

    p = Principals(factory)
    yield p
    p.close()


def _data(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return dict(result.structured_content)
    first = result.content[0]
    assert isinstance(first, types.TextContent)
    return dict(json.loads(first.text))


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allowed_and_pending(principals: Principals, mode: str) -> None:
    async with Client(build_server(principals), mode=mode) as client:  # type: ignore[arg-type]
        res = await client.call_tool("exec", {"command": "echo hi"})
        assert _data(res)["stdout"] == "hi\n"
        held = await client.call_tool("exec", {"command": "echo hi; id"})
        assert held.is_error and "corral approvals approve" in _text(held)
        ident = re.search(r"pending as approval ([0-9a-f]{8})", _text(held)).group(1)  # type: ignore[union-attr]
        store = principals.tools("stdio").store
        store.decide(ident, approve=True)
        other = await client.call_tool("exec", {"command": "echo hi; id -u"})
        assert other.is_error  # a grant for one call does not cover another
        res = await client.call_tool("exec", {"command": "echo hi; id"})
        assert "hi" in _data(res)["stdout"]
        again = await client.call_tool("exec", {"command": "echo hi; id"})
        assert again.is_error  # single use


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("answer", ["accept", "deny", "decline"])
async def test_elicitation(principals: Principals, provider: Any, mode: str,
                           answer: str) -> None:
    asked: list[str] = []

    async def elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        if answer == "decline":
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept",
                                  content={"approve": answer == "accept", "reason": "test"})

    async with Client(build_server(principals), mode=mode,  # type: ignore[arg-type]
                      elicitation_callback=elicit) as client:
        res = await client.call_tool("write", {"path": "w.txt", "content": "x"})
        assert asked and "w.txt" in asked[0]
        if answer == "accept":
            assert not res.is_error and (Path(provider.root) / "w.txt").read_text() == "x"
        else:
            assert res.is_error and not (Path(provider.root) / "w.txt").exists()
    decided = principals.tools("stdio").store.list(include_decided=True)
    assert decided[-1].status == ("used" if answer == "accept" else "denied")


async def test_tools_listed(principals: Principals) -> None:
    async with Client(build_server(principals)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert names == {"exec", "read", "write", "edit", "glob", "grep", "fetch"}
