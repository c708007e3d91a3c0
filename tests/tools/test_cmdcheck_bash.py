"""Differential check of the allowlist checker against bash itself.

Commands are generated from shell fragments; whenever the checker says "allowed", the command
is run by the real bash with a PATH holding only stubs, where ``curl`` (not in the allowlist)
leaves a marker file. The marker must never appear: what the checker allows, bash must not
turn into a call of something else.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.tools.cmdcheck import check_command

ALLOW = ["git status", "git diff *", "echo *", "ls", "ls *", "cat *", "true"]
FRAGMENTS = ["git status", "git diff a", "curl x", "echo", "ls", "cat", " ", " ", ";", "&&",
             "||", "|", "&", "\n", "$(", ")", "(", "`", "\\`", "\\$(", "'", '"', "<<EOF\n",
             "\nEOF\n", "<<'EOF'\n", "\\", "#", "{ ", " }", ">", ">>", "<", "<(", "$'",
             "\\x60", "${x:-", "}", "=", "X=1 ", "env ", "bash -c ", "sh -c ", "eval ", "$X",
             "*", "?", "~", "!", "\t", "\r"]


def _stubs(root: Path) -> Path:
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    marker = root / "CURL-RAN"
    for name in ("git", "ls", "cat", "true"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "curl").write_text(f"#!/bin/sh\n: > {marker}\n")  # no touch on this PATH
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


KNOWN = [  # bypasses of tree-sitter readings that bash does not share
    ["echo ", "`", "echo ", "\\`", "curl x", "\\`", "`"],
    ["echo ", "`", "echo ", "\\$(", "curl x", ")", "`"],
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(["echo ", "git status", "cat ", "ls ", "echo `"]),
       st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10))
@example("", KNOWN[0])
@example("", KNOWN[1])
def test_allowed_commands_never_run_curl_in_bash(
    tmp_path_factory: pytest.TempPathFactory, head: str, parts: list[str]
) -> None:
    command = head + "".join(parts)
    verdict = check_command(command, ALLOW)
    if not verdict.allowed:
        return
    root = tmp_path_factory.getbasetemp() / "cmdcheck-bash"
    root.mkdir(exist_ok=True)
    bin_dir = _stubs(root)
    marker = root / "CURL-RAN"
    marker.unlink(missing_ok=True)
    work = root / "work"
    work.mkdir(exist_ok=True)
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", command], cwd=work,
                       env={"PATH": str(bin_dir), "HOME": str(work)}, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=5)
    assert not marker.exists(), f"checker allowed {command!r} but bash ran curl"
