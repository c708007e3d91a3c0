"""Agent-controlled text is data in every renderer: audit list/show/tail, the run summary,
the approvals CLI and the server-backed listings (``--project``) show it literally (control
characters as visible escapes), never as markup.

The property tests drive the real typer apps in-process (one process per example would take
minutes); ``test_issue_examples_end_to_end`` runs the installed ``corral`` command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from corral.audit import AuditStore, summary
from corral.cli.approvals import app as approvals_app
from corral.cli.audit import app as audit_app
from corral.render import visible

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")
# Every character a terminal may act on; none may reach the output raw (newline aside).
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)
SGR = re.compile("\x1b\\[[0-9;]*m")
NASTY = [
    "[/x]", "[red]HIDDEN[/red]", "\x1b[2J", "\x1b]0;pwned\x07", "a\rb", "[/tmp/p/policy.yaml:4]",
    ":smile:", "[bold", "\u202eevil", "\x9b31m", "é—漢字", "[link=http://x]y[/link]", "\\[x]",
]
# Short enough that a whole escaped value fits one table cell at the piped width (200).
agent_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(exclude_categories=()), min_size=1, max_size=14),
    st.text(st.sampled_from("[]/\\:x \x1b\x07\r\n\t"), min_size=1, max_size=14),
)
runner = CliRunner()
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # `home` makes a fresh dir per example


def _literal(out: str, text: str) -> None:
    """``text`` is shown exactly (escaped where it would drive the terminal), nothing raw."""
    plain = SGR.sub("", out)
    assert visible(text) in plain, (text, out)
    assert not RAW_CONTROL.search(plain.replace("\n", "")), (text, out)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Path]]:
    """A fresh CORRAL_HOME per example (hypothesis reuses one function-scoped fixture)."""
    made: list[tempfile.TemporaryDirectory[str]] = []

    def fresh() -> Path:
        tmp = tempfile.TemporaryDirectory(prefix="corral-render-")
        made.append(tmp)
        monkeypatch.setenv("CORRAL_HOME", str(Path(tmp.name) / "state"))
        monkeypatch.setenv("CORRAL_CONFIG", str(Path(tmp.name) / "config"))
        return Path(tmp.name) / "state"

    yield fresh
    for tmp in made:
        tmp.cleanup()


def _proxy_event(field: str, text: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "host": "h.example", "rule": "p.yaml:1", "method": "GET", "path": "/p", "status": 403,
        "reason": "denied",
    }
    data[field] = text
    return data


def _audit(state: Path, events: list[tuple[str, dict[str, Any]]]) -> Path:
    db = state / "audit.db"
    store = AuditStore.open(db)
    trail = store.trail("sb-r")
    for kind, data in events:
        trail.emit(kind, **data)
    trail.close("ok")
    store.close()
    return db


def _cli(app: Any, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0 and result.exception is None, (args, result.output)
    return result.output


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    field=st.sampled_from(["host", "path", "rule", "reason", "method"]),
    text=agent_text,
)
def test_audit_renderers_show_proxy_fields_literally(
    home: Callable[[], Path], field: str, text: str
) -> None:
    db = _audit(home(), [("proxy.deny", _proxy_event(field, text))])
    for args in (["list"], ["show", "sb-r"], ["tail", "-n", "5"]):
        _literal(_cli(audit_app, *args, "--db", str(db)), text)
    for color in (False, True):
        if field == "host":
            _literal(summary("sb-r", db, width=200, color=color), text)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(text=agent_text)
def test_audit_renderers_show_commands_and_reasons_literally(
    home: Callable[[], Path], text: str
) -> None:
    db = _audit(home(), [
        ("sandbox.create", {"command": ["agent", text], "mode": "run"}),
        ("error", {"component": "proxy.tls", "message": text}),
        ("sandbox.exit", {"status": 1, "reason": text}),
    ])
    shown_command = visible(json.dumps(["agent", text], ensure_ascii=False))
    for args in (["list"], ["show", "sb-r"], ["tail", "-n", "5"]):
        out = _cli(audit_app, *args, "--db", str(db))
        _literal(out, text)
        assert shown_command in out
    for color in (False, True):
        out = summary("sb-r", db, width=200, color=color)
        _literal(out, text)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    field=st.sampled_from(["command", "summary", "why"]),
    text=agent_text,
)
def test_approvals_cli_shows_agent_text_literally(
    home: Callable[[], Path], field: str, text: str
) -> None:
    from corral.tools.approvals import ApprovalStore

    home()
    values = {"command": "ls", "summary": "ls", "why": "needs approval"}
    values[field] = text
    item = ApprovalStore().request(
        "exec", {"command": values["command"]}, policy_digest="sha256:x", workspace="/w",
        summary=values["summary"], why=values["why"],
    )
    # list shows the summary and why; show shows why and the exact arguments (as JSON).
    shows = {"list": ("summary", "why"), "show": ("why", "command")}
    for args in (["list"], ["show", item.id]):
        out = _cli(approvals_app, *args)
        if field in shows[args[0]]:
            _literal(out, text if field != "command" else json.dumps(text, ensure_ascii=False))
        assert not RAW_CONTROL.search(out.replace("\n", ""))
    _literal(_cli(approvals_app, "deny", item.id, "--reason", "no"), values["summary"])


@pytest.mark.parametrize("text", ["", "abc", "a[b]c", "[/x]", "é漢字", "x\\y"])
def test_visible_keeps_printable_text(text: str) -> None:
    assert visible(text) == text


@given(st.text(st.characters(exclude_categories=())))
def test_visible_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    shown = visible(text)
    assert not RAW_CONTROL.search(shown) and "\n" not in shown
    # Character by character: a plain one is kept as is, any other becomes a printable escape.
    unsafe = [c for c in text if RAW_CONTROL.match(c) or c == "\n"]
    assert shown == "".join(visible(c) if c in unsafe else c for c in text)
    assert all(visible(c).startswith("\\") and visible(c).isascii() for c in unsafe)


def test_issue_examples_end_to_end(corral_env: dict[str, str], tmp_path: Path) -> None:
    """The reported cases with the installed command: exit 0 and the text shown as sent."""
    origin = f"{tmp_path}/policy.yaml:4"
    store = AuditStore.open()
    trail = store.trail("sb-e")
    trail.emit("proxy.deny", host="example.com", rule=origin, method="GET", path="/[/x]",
               status=403)
    trail.emit("proxy.deny", host="example.com", rule=origin, method="GET",
               path="/[red]HIDDEN[/red]\x1b[2J", status=403)
    trail.close("ok")
    store.close()
    env = {**os.environ, **corral_env}
    for args in (["list"], ["show", "sb-e"]):
        out = subprocess.run([CORRAL, "audit", *args], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "example.com/[/x]" in out.stdout
        assert "/[red]HIDDEN[/red]\\x1b[2J" in out.stdout
        assert f"[{origin}]" in out.stdout
        assert "\x1b" not in out.stdout


class _Server:
    """What ``corral server`` answers, as ``corral.client.Client.get`` returns it: the
    listings' renderer is under test here, not the server (tests/server runs the real one)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get(self, path: str) -> dict[str, Any]:
        t = self.text
        if "/audit?" in path:
            return {"events": [{"id": 1, "run": t + "0" * 8, "seq": 1, "type": "proxy.deny",
                                "human": t, "agent": t, "data": {"path": t}}]}
        return {"runs": [{"id": t, "status": t, "human": t, "agent": t, "host": t,
                          "command": [t], "events": 1, "started_at": t}]}


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(text=agent_text)
def test_server_listings_show_agent_text_literally(text: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``sandbox list --project`` and ``audit list --project`` (names, commands and event
    fields other users' agents chose) print ``visible`` text."""
    from corral.cli import remote_runs

    monkeypatch.setattr(remote_runs, "client", lambda server: _Server(text))
    capsys.readouterr()
    remote_runs.sandbox_list("p", False, None, False)
    remote_runs.audit_list("p", None, None, None, 10, None, False)
    out = capsys.readouterr().out
    _literal(out, text)
    assert visible(f"path={text}").rstrip() in out  # a row ends without padding
    # one header and one row per listing, however many newlines the text held
    assert len(out.splitlines()) == 4, (text, out)
