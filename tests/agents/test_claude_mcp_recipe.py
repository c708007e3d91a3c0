"""docs/agents.md "Claude Code as an MCP client of ``corral mcp``", run for real: Claude Code
(``claude -p``, on the host, as the recipe has it) with corral added by ``claude mcp add`` as
the recipe writes it (only the paths adapted; the suite runs as root, so no ``sudo -n``), its
API base URL on the fake provider in a test network namespace (Claude Code talks to the model
directly in Mode 1; corral guards the tools). The provider's scripted model
(tests/agents/fake_model.py) loads ``mcp__corral__exec`` through ``ToolSearch``, as Claude
Code's deferred MCP tools require, calls it with the command in the prompt and then quotes the
tool result it received.

- An allowed command runs inside the tools sandbox: it writes a file into the workspace as
  the sandbox user, its output reaches the provider in the ``tool_result``, claude prints the
  answer, and corral's audit trail has the ``tool.call``.
- A command the policy holds does not run; the run ends with the approval ID, which reached
  the model and claude's output. After ``corral approvals approve ID``,
  ``claude -p --continue "approved, retry"`` makes the same call again, and it runs. Print
  mode cannot answer an elicitation: with ``--approvals cli`` none is asked; without it
  Claude Code (which declares the capability) cancels the question, and the call is held the
  same way.

Without the recipe's ``--allowedTools mcp__corral__exec`` both fail (print mode refuses the
call); with the held command allowed by the policy the second fails (nothing is held).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root

from tests.agents import test_sdk_recipes as recipes
from tests.agents.provider import Provider, serve

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
CORRAL = str(Path(sys.executable).parent / "corral")
DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
SECTION = "## Claude Code as an MCP client of `corral mcp`"
claude = recipes.claude  # Claude Code for this session (installed from npm when missing)
MARK = "corral-mcp-recipe-7f3a"
# Held by the policy's allowlist; what the approval lets through.
HELD = "touch approved-by-a-human.txt && echo touched"
Lines = queue.Queue[str]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provider, Lines]]:
    """The provider and its log lines, read as they come (a missing line fails in seconds)."""
    with serve(tmp_path_factory.mktemp("provider"), net="10.249", prefix="m") as got:
        lines: Lines = queue.Queue()
        out = got.log.stdout
        assert out is not None

        def pump() -> None:
            for line in out:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        yield got, lines


def _doc_lines() -> list[list[str]]:
    """The ``claude`` command lines of the recipe's section of docs/agents.md, split as the
    shell splits them: ``claude mcp add``, ``claude -p``, the retry with ``--continue``."""
    text = DOC.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [shlex.split(line) for line in text.splitlines() if line.startswith("claude ")]
    assert [line[:2] for line in lines] == [["claude", "mcp"], ["claude", "-p"],
                                            ["claude", "-p"]], lines
    return [line[1:] for line in lines]


def _adapted(add: list[str], paths: dict[str, str], approvals: str) -> list[str]:
    """The doc's ``claude mcp add`` with only the paths changed: no ``sudo -n`` (the suite
    runs as root), and without ``--approvals cli`` for the "auto" case."""
    at = add.index("sudo")
    assert add[at:at + 2] == ["sudo", "-n"], add
    argv = [paths.get(a, a) for a in add[:at] + add[at + 2:]]
    assert all(a in paths.values() for a in argv if a.startswith("/")), argv  # all adapted
    at = argv.index("--approvals")
    assert argv[at + 1] == "cli", argv
    return argv if approvals == "cli" else argv[:at] + argv[at + 2:]


@dataclass
class Recipe:
    claude: Path
    cwd: Path
    ws: Path
    env: dict[str, str]
    log: Lines  # the provider's log
    approvals: str  # corral mcp's --approvals
    lines: list[list[str]]  # the doc's lines: mcp add, -p, the retry

    def ask(self, prompt: str) -> subprocess.CompletedProcess[str]:
        """The doc's ``claude -p`` line with this prompt."""
        return self.run("-p", prompt, *self.lines[1][2:])

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.claude), *args], cwd=self.cwd, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=90, check=False)

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CORRAL, *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)

    def calls(self) -> list[str]:
        """The commands the model called exec with in this turn (after loading the tool)."""
        got = self.scripted()
        if "search" in got:  # Claude Code defers MCP tools: the model loads it first
            assert got["search"] == "mcp__corral__exec", got
            got = self.scripted()
        return [got["tool_use"]["command"]]

    def scripted(self) -> dict[str, Any]:
        """The provider's next log line of a scripted turn (other requests skipped)."""
        while True:
            try:
                line = json.loads(self.log.get(timeout=15))
            except queue.Empty:
                pytest.fail("the provider saw no scripted turn: the model was never asked")
            if line.get("api") == "anthropic-script":
                return dict(line)


@pytest.fixture(params=["cli"])
def recipe(request: pytest.FixtureRequest, provider: tuple[Provider, Lines], claude: Path,
           tmp_path: Path, corral_env: dict[str, str]) -> Recipe:
    """The recipe's ``claude mcp add`` line (``--approvals`` as the parameter says)."""
    require_root()
    served, log = provider
    ws, home, cwd = tmp_path / "ws", tmp_path / "home", tmp_path / "project"
    for path in (ws, home, cwd):
        path.mkdir()
    policy = tmp_path / "dev.yaml"
    policy.write_text("name: dev\nexec:\n  mode: allowlist\n"
                      "  allow: ['printf *', 'cat *', 'id -u']\n", encoding="utf-8")
    # Claude Code on the host talks to the provider directly (Mode 1: corral guards the
    # tools, not the model's API); its own config lives in a fresh $HOME.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(corral_env, HOME=str(home), ANTHROPIC_BASE_URL=f"https://{served.ip}",
               ANTHROPIC_API_KEY=served.keys["anthropic"], NODE_EXTRA_CA_CERTS=str(served.ca),
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    got = Recipe(claude, cwd, ws, env, log, request.param, _doc_lines())
    paths = {"/usr/local/bin/corral": CORRAL, "/etc/corral/dev.yaml": str(policy),
             "/home/me/src/project": str(ws)}
    added = got.run(*_adapted(got.lines[0], paths, request.param))
    assert added.returncode == 0, added
    return got


def test_claude_runs_a_command_in_the_sandbox_through_corral_mcp(recipe: Recipe) -> None:
    command = f"printf '{MARK}\\n' > made.txt && cat made.txt && id -u"
    done = recipe.ask(f"run `{command}` with the corral exec tool")
    assert done.returncode == 0, done
    assert recipe.calls() == [command]
    answered = recipe.scripted()
    assert not answered["is_error"], answered
    # It ran inside the sandbox: as the sandbox's uid (not root), writing into the workspace.
    result = json.loads(answered["tool_result"])
    assert result["exit_code"] == 0 and result["stdout"].split("\n")[0] == MARK, result
    assert int(result["stdout"].split("\n")[1]) != 0, result
    assert (recipe.ws / "made.txt").read_text() == f"{MARK}\n"
    assert "corral exec said:" in done.stdout and MARK in done.stdout, done
    trail = recipe.corral("audit", "list", "--type", "tool.call", "--json", "--limit", "0")
    calls = [json.loads(line) for line in trail.stdout.splitlines() if line.strip()]
    assert [(c["data"]["tool"], c["data"]["ok"], c["data"]["args"].get("command"))
            for c in calls] == [("exec", True, command)], trail


# "auto": without --approvals cli, Claude Code (which declares elicitation) is asked, its
# print mode cancels the question, and the call is held all the same.
@pytest.mark.parametrize("recipe", ["cli", "auto"], indirect=True)
def test_a_held_call_runs_after_approval_and_a_retry(recipe: Recipe) -> None:
    done = recipe.ask(f"run `{HELD}` with the corral exec tool")
    assert done.returncode == 0, done
    assert recipe.calls() == [HELD]
    held = recipe.scripted()
    found = re.search(r"pending as approval ([0-9a-f]{8})", held["tool_result"])
    assert held["is_error"] and found, held
    assert ("prompt was cancelled" in held["tool_result"]) == (recipe.approvals == "auto"), held
    ident = found.group(1)
    assert ident in done.stdout, done  # the human running claude -p sees the ID
    assert not (recipe.ws / "approved-by-a-human.txt").exists()

    # The recipe's advice: decide it in another terminal, then let the agent retry.
    listed = recipe.corral("approvals", "list")
    assert ident in listed.stdout and HELD in listed.stdout, listed
    approved = recipe.corral("approvals", "approve", ident)
    assert approved.returncode == 0, approved
    again = recipe.run(*recipe.lines[2])  # claude -p --continue "approved, retry" ...
    assert again.returncode == 0, again
    assert recipe.calls() == [HELD]
    ran = recipe.scripted()
    assert not ran["is_error"] and "touched" in ran["tool_result"], ran
    assert (recipe.ws / "approved-by-a-human.txt").exists()
    assert "touched" in again.stdout, again
    trail = recipe.corral("audit", "list", "--json", "-t", "approval.*", "-t", "tool.call",
                          "--limit", "0")
    kinds = [(e["type"], e["data"].get("decision") or e["data"].get("ok"))
             for e in map(json.loads, trail.stdout.splitlines())]
    assert kinds[-3:] == [("approval.decide", "approved"), ("approval.use", None),
                          ("tool.call", True)], trail
