"""The MCP server is built from ``corral.mcp.server.TOOLS``: each row is one tool.

For every row, the listed tool's input schema has the row's parameters (those without a
default required), and a property test drives generated arguments for every tool through the
SDK's in-process client: the gate sees exactly the arguments the client sent with the row's
defaults filled in, and the call runs with the same arguments (nothing dropped, renamed or
added between the MCP signature, the approval resolver and the executor).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client import Client

from corral.mcp import Principals, build_server
from corral.mcp.server import TOOLS, ToolSpec

NAMES = {"exec", "read", "write", "edit", "glob", "grep", "fetch"}
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    str: _text,
    int: st.integers(-(2**31), 2**31),
    float: st.floats(0, 1e6, allow_nan=False),
    bool: st.booleans(),
    list[str]: st.lists(_text, max_size=3),
    dict[str, str]: st.dictionaries(st.text("abcdefgh-", min_size=1, max_size=8), _text,
                                    max_size=3),
    str | None: st.none() | _text,
}


@dataclass
class _Gate:
    summary: str = "s"
    reason: str = "r"
    needs_approval: bool = False


@dataclass
class _Recorder:
    """Stands in for ``Tools``: always authorized, records what the gate and run see."""

    workspace: str = "/ws"
    gated: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ran: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def gate(self, tool: str, args: dict[str, Any]) -> _Gate:
        self.gated.append((tool, args))
        return _Gate()

    def authorize(self, tool: str, args: dict[str, Any], gate: _Gate) -> bool:
        return True

    def run(self, tool: str, args: dict[str, Any], *, gate: _Gate, on_progress: Any) -> Any:
        self.ran.append((tool, args))
        return {"ok": True}

    def close(self) -> None:
        pass


def _schema_type(ann: Any) -> st.SearchStrategy[Any]:
    return _VALUES[ann]


@st.composite
def _calls(draw: st.DrawFn) -> tuple[ToolSpec, dict[str, Any]]:
    spec = draw(st.sampled_from(TOOLS))
    sent: dict[str, Any] = {}
    for p in spec.params:
        if p.default is inspect.Parameter.empty or draw(st.booleans()):
            sent[p.name] = draw(_schema_type(p.type))
    return spec, sent


def test_rows_are_the_tools() -> None:
    assert {t.name for t in TOOLS} == NAMES
    for spec in TOOLS:
        assert all(p.type in _VALUES for p in spec.params), spec.name

    async def listed() -> list[Any]:
        async with Client(build_server(Principals(lambda p: _Recorder()))) as client:
            return list((await client.list_tools()).tools)

    tools = {t.name: t for t in anyio.run(listed)}
    for spec in TOOLS:
        schema = tools[spec.name].input_schema
        assert list(schema["properties"]) == [p.name for p in spec.params]
        required = [p.name for p in spec.params if p.default is inspect.Parameter.empty]
        assert sorted(schema.get("required", [])) == sorted(required)
        for p in spec.params:
            if p.default is not inspect.Parameter.empty:
                assert schema["properties"][p.name]["default"] == p.default


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(_calls(), min_size=1, max_size=4))
def test_gate_and_run_see_what_was_sent(calls: list[tuple[ToolSpec, dict[str, Any]]]) -> None:
    recorder = _Recorder()
    principals = Principals(lambda p: recorder)  # type: ignore[arg-type,return-value]

    async def drive() -> None:
        async with Client(build_server(principals)) as client:
            for spec, sent in calls:
                result = await client.call_tool(spec.name, sent)
                assert not result.is_error, (spec.name, sent, result.content)

    anyio.run(drive)
    expected = [(spec.name, {p.name: sent.get(p.name, p.default) for p in spec.params})
                for spec, sent in calls]
    assert recorder.gated == expected
    assert recorder.ran == expected
