"""The allowlist checker: allowed commands pass, every bypass attempt is held."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.tools.cmdcheck import check_command

ALLOW = ["git status", "git diff *", "pytest *", "ls *", "ls", "echo *", "cat *", "env *",
         "true", "cat", "grep *", "wc *", "cd *", "sh -c *", "bash -c *", "timeout *", "nice *"]

ALLOWED = [
    "git status",
    "git diff HEAD~1",
    "git status && git diff a",
    "git status; ls -la",
    "ls | grep foo | wc -l",
    "(git status)",
    "{ git status; }",
    "git status # a comment mentioning curl",
    "git status\nls",
    "echo $(git status)",
    "echo `git status`",
    "cat <(ls)",
    "cat <<< 'hello'",
    "cat <<'EOF'\n$(curl x)\nEOF\n",
    "cat <<EOF\nplain $(git status)\nEOF\n",
    "ls > out.txt 2>&1",
    "ls > /workspace/sub/out.txt",
    "ls 2>/dev/null",
    "g\"it\" status",
    "'git' status",
    "echo \"$HOME\"",
    "env -i git status",
    "timeout 5 pytest -q",
    "nice -n 5 git status",
    "bash -c 'git status; ls'",
    "git status & ls",
    "! git status",
    "pytest -k 'a or b'",
    "echo \"; curl x\"",
]

HELD = [
    ("git status; curl x", "not in exec.allow"),
    ("git status && curl x", "not in exec.allow"),
    ("git status || curl x", "not in exec.allow"),
    ("git status | curl x", "not in exec.allow"),
    ("git status & curl x", "not in exec.allow"),
    ("git status\ncurl x", "not in exec.allow"),
    ("git status\r\ncurl x", "not in exec.allow"),
    ("echo $(curl x)", "not in exec.allow"),
    ("echo `curl x`", "not in exec.allow"),
    ("echo \"$(curl x)\"", "not in exec.allow"),
    ("echo \"`curl x`\"", "not in exec.allow"),
    ("git diff $(curl x)", "git with an expanded"),
    ("cat <(curl x)", "not in exec.allow"),
    ("ls > >(curl x)", "not in exec.allow"),
    ("cat <<< \"$(curl x)\"", "not in exec.allow"),
    ("cat <<EOF\n$(curl x)\nEOF\n", "not in exec.allow"),
    ("(curl x)", "not in exec.allow"),
    ("{ curl x; }", "not in exec.allow"),
    ("env X=1 curl x", "not in exec.allow"),
    ("env X=1 git status", "not in exec.allow"),
    ("env BASH_ENV=./x.sh bash -c 'git status'", "not in exec.allow"),
    ("env LD_PRELOAD=./x.so git status", "not in exec.allow"),
    ("env -u A curl x", "not in exec.allow"),
    ("env -S 'curl x'", "env -S"),
    ("X=1 git status", "not in exec.allow"),
    ("PATH=/tmp git status", "not in exec.allow"),
    ("git status > /etc/x", "outside the workspace"),
    ("git status > ../x", "outside the workspace"),
    ("git status > /workspace/../etc/x", "outside the workspace"),
    ("git status >> ~/.bashrc", "not a literal path"),
    ("git status > $HOME/x", "not a literal path"),
    ("cat < /etc/passwd", "outside the workspace"),
    ("cd /etc && ls > x", "after a directory change"),
    ("bash -c 'curl x'", "not in exec.allow"),
    ("sh -c \"git status; curl x\"", "not in exec.allow"),
    ("bash -c \"$X\"", "shell without a literal"),
    ("echo curl x | bash", "shell without a literal"),
    ("bash script.sh", "shell without a literal"),
    ("eval 'git status'", "always needs approval"),
    ("eval \"$(curl x)\"", "always needs approval"),
    ("source ./x.sh", "always needs approval"),
    (". ./x.sh", "always needs approval"),
    ("exec curl x", "not in exec.allow"),
    ("$CMD status", "not a literal"),
    ("${CMD} status", "not a literal"),
    ("$(echo git) status", "not a literal"),
    ("`echo curl` x", "not a literal"),
    ("gi* status", "not a literal"),
    ("git sta\\\ntus", "line continuation"),
    ("git status $(", "does not parse"),
    ("git status \"unterminated", "does not parse"),
    ("f() { curl x; }; f", "unsupported"),
    ("for i in 1; do curl x; done", "unsupported"),
    ("if true; then curl x; fi", "unsupported"),
    ("[[ -v 'a[$(curl x)]' ]]", "unsupported"),
    ("echo $((a[$(curl x)]))", "arithmetic"),
    ("echo ${x@P}", "parameter expansion"),
    ("x=$(curl x)", "variable assignment"),
    ("x=1", "variable assignment"),
    ("export PATH=/tmp", "unsupported"),
    ("alias git=curl", "always needs approval"),
    ("xargs curl < list", "always needs approval"),
    ("timeout 5 curl x", "not in exec.allow"),
    ("nice curl x", "not in exec.allow"),
    ("command curl x", "not in exec.allow"),
    ("env bash -c 'curl x'", "not in exec.allow"),
    ("", "no command"),
    ("# only a comment", "no command"),
    ("curl x # git status", "not in exec.allow"),
    ("git 'status; curl x'", "not in exec.allow"),
    ("git \"status\" ; curl x", "not in exec.allow"),
    ("git status\x00; curl x", "NUL"),
    ("read 'a[$(curl x)]'", "can evaluate code"),
    ("echo `echo \\`curl x\\``", "re-parsed by bash"),
    ("echo ${x:-$(curl x)}", "parameter expansion"),
    ("git status 2>/dev/tcp/10.0.0.1/80", "outside the workspace"),
    ("{curl,x}", "does not parse"),
    ("$'git' status", "not a literal"),
    ("\\c\\u\\r\\l x", "not in exec.allow"),
]


@pytest.mark.parametrize("command", ALLOWED)
def test_allowed(command: str) -> None:
    verdict = check_command(command, ALLOW)
    assert verdict.allowed, (command, verdict.reason)


@pytest.mark.parametrize(("command", "reason"), HELD)
def test_held(command: str, reason: str) -> None:
    verdict = check_command(command, ALLOW)
    assert not verdict.allowed, command
    assert reason in verdict.reason, (command, verdict.reason)


def test_read_with_subscript_held_even_if_allowed() -> None:
    verdict = check_command("read 'a[$(curl x)]'", ["read *"])
    assert not verdict.allowed and "evaluate" in verdict.reason


def test_star_pattern_still_holds_dynamic_code() -> None:
    for command in ("eval x", "source x", "$X", "bash", "git status > /etc/x"):
        assert not check_command(command, ["*"]).allowed, command


def test_empty_allowlist_holds_everything() -> None:
    assert not check_command("true", []).allowed


def test_verdict_lists_commands() -> None:
    verdict = check_command("git status && echo $(ls)", ALLOW)
    assert set(verdict.commands) == {"git status", "echo $(ls)", "ls"}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="curlgitsa ;&|$()`'\"\n<>{}!#\\-x=*", max_size=30))
def test_curl_never_passes(command: str) -> None:
    """Whatever surrounds it, a command containing a runnable curl is never auto-allowed
    by an allowlist that does not allow curl (fuzzing the separators and quoting)."""
    verdict = check_command(command, ["git status", "echo *", "ls"])
    if verdict.allowed:
        assert all(c.split(" ")[0] in ("git", "echo", "ls") for c in verdict.commands), verdict


def test_env_assignments_must_be_named_by_a_pattern() -> None:
    allow = ["env *", "LANG=C git status"]
    assert check_command("env LANG=C git status", allow).allowed
    assert not check_command("env LD_PRELOAD=/x.so git status", allow).allowed
