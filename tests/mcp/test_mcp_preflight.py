"""``corral mcp`` refuses at start what ``corral run`` refuses, with the same message, and a
tool call that fails later says why to the client in one line.

Differential: each bad input is given to both commands (real processes, fresh state); ``run``
exits 125 and ``mcp`` exits 2, each with one ``corral:`` line on stderr and the same reason
(typer's "Invalid value for '--flag'" frame and the ``--flag VALUE:`` prefix aside).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from conftest import require_root
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

pytestmark = pytest.mark.timeout(120)

CORRAL = str(Path(sys.executable).parent / "corral")
CRED_POLICY = """name: cred
egress:
  - host: api.example.com
    action: inspect
    credential: tok
credentials:
  tok:
    secret: store:tok
    header: Authorization
    format: "Bearer {secret}"
exec:
  mode: allow
"""


def _reason(line: str) -> str:
    """The message without the parts that differ by parser: typer's frame on ``mcp`` and the
    ``--flag VALUE:`` prefix ``run`` puts in front."""
    line = line.removeprefix("corral: ")
    line = re.sub(r"^mcp: Invalid value for '[^']+'(?: / '[^']+')?: ", "", line)
    line = re.sub(r" \(see 'corral mcp --help'\)$", "", line)
    return re.sub(r"^--[a-z-]+:? ", "", line)


def _one_line(args: list[str], env: dict[str, str], cwd: Path, code: int) -> str:
    done = subprocess.run([CORRAL, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    lines = done.stderr.splitlines()
    assert done.returncode == code and len(lines) == 1, (args, done.returncode, done.stderr)
    assert lines[0].startswith("corral: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["missing policy", "directory policy", "comment-only policy",
                                  "missing credential", "missing workspace", "empty workspace",
                                  "bad upstream proxy"])
def test_mcp_refuses_at_start_as_run_does(corral_env: dict[str, str], tmp_path: Path,
                                          case: str) -> None:
    require_root()  # corral run refuses everything else first without it
    env = {**os.environ, **corral_env}
    (tmp_path / "comments.yaml").write_text("# nothing yet\n")
    (tmp_path / "cred.yaml").write_text(CRED_POLICY)
    (tmp_path / "adir").mkdir()
    args = {"missing policy": ["-p", "nosuch.yaml"], "directory policy": ["-p", "adir"],
            "comment-only policy": ["-p", "comments.yaml"],
            "missing credential": ["-p", "cred.yaml"],
            "missing workspace": ["--workspace", str(tmp_path / "nosuch")],
            "empty workspace": ["--workspace", ""],
            "bad upstream proxy": ["--upstream-proxy", "garbage"]}[case]
    ran = _one_line(["run", *args, "--", "true"], env, tmp_path, 125)
    served = _one_line(["mcp", *args], env, tmp_path, 2)
    assert _reason(served) == _reason(ran), (ran, served)


def test_a_tool_call_that_fails_later_says_why(corral_env: dict[str, str],
                                               tmp_path: Path) -> None:
    """The secret goes away after start: the call fails with the reason on one line as the
    result's whole text (no SDK "Error executing tool exec: " in front), and the server's stderr
    gets exactly that one line, naming the tool, without a traceback."""
    require_root()
    env = {**os.environ, **corral_env}
    (tmp_path / "cred.yaml").write_text(CRED_POLICY)
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run([CORRAL, "creds", "set", "tok"], input="secret-value", text=True, env=env,
                   check=True, capture_output=True)
    params = StdioServerParameters(command=CORRAL, env=env, cwd=str(tmp_path),
                                   args=["mcp", "-p", "cred.yaml", "--workspace", str(ws)])
    errlog = tmp_path / "mcp.stderr"

    async def call() -> tuple[bool, str]:
        with errlog.open("w") as err:
            async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
                subprocess.run([CORRAL, "creds", "rm", "tok"], env=env, check=True,
                               capture_output=True)
                res = await client.call_tool("exec", {"command": "true"})
        text = " ".join(getattr(c, "text", "") for c in res.content)
        return res.is_error, text

    is_error, text = anyio.run(call)
    assert is_error, text
    assert text == ("credential 'tok' (cred.yaml:7): no stored secret 'tok'; "
                    "set it with `corral creds set tok`"), text
    logged = errlog.read_text().splitlines()
    assert logged == [f"corral mcp: exec failed: {text}"], logged
