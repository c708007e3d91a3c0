"""Differential check of the allowlist checker against bash itself.

Commands come from a grammar of shell constructs (parameter expansions with every operator,
nested quoting, ``$'..'`` with ``\\x`` escapes, backquotes, ``$(...)``, arithmetic, subscripts,
brace expansion, redirections, process substitution, here-strings and heredocs, ``;``/``&&``/
``|``, and builtins that run code). Every command the checker APPROVES is run by the real bash,
and every command that actually ran is recorded two ways:

- ``strace -f -e trace=execve``: every program executed, by any route;
- bash's own xtrace (``SHELLOPTS=xtrace`` in the environment, ``BASH_XTRACEFD``): every simple
  command bash executed, builtins (``eval``, ``source``, ``.``, ``command``, ``exec``, ...)
  included, in subshells and substitutions too.

Any name in either record that the allowlist does not allow fails the test. bash runs as
``nobody`` in a scratch dir, with a clean environment (whose variables hold code, so an
arithmetic context that evaluates one runs it), a 5 s timeout, and a PATH of shims that only
log their argv. A floor keeps the checker honest the other way: nearly all generated plain
commands (allowed names, literal words, plain expansions) must be approved.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from corral.tools.cmdcheck import check_command
from tests.conftest import require_root, require_tools

ALLOW = ["echo *", "printf *", "git status", "git diff *", "ls", "ls *", "cat *", "true",
         "grep *", "wc *"]
ALLOWED_NAMES = {"echo", "printf", "git", "ls", "cat", "true", "grep", "wc"}
SHIMS = ["git", "ls", "cat", "grep", "wc", "curl", "id", "touch", "rm", "find", "xargs", "env"]
NOBODY = 65534
STRACE = shutil.which("strace") or "strace"
# Variables bash sees: values that run code if anything evaluates them as arithmetic.
ENV_VARS = {"x": "a[$(id)]", "y": "1", "z": "abcdef", "w": "`id`", "v": "x"}

# -- the grammar -------------------------------------------------------------------------------

PAYLOADS = ["id", "curl x", "touch p", "rm -f q", "env id", "find . -exec id ;",
            "xargs id", "git -c core.pager=id log"]
BUILTINS = ["eval id", "source ./s", ". ./s", "command id", "exec id", "printf -v 'a[$(id)]' x",
            "read 'a[$(id)]'", "let 'a[$(id)]'", "declare -n r=x", "trap id EXIT",
            "test -v 'a[$(id)]'", "[ -v 'a[$(id)]' ]", "builtin eval id", "x=$(id)"]
ALLOWED_CMDS = ["echo hi", "echo", "printf %s a", "git status", "git diff a", "ls", "ls -la",
                "cat f", "true", "grep -n a f", "wc -l f"]
VAR = st.sampled_from(["x", "y", "z", "w", "v", "u", "1", "@", "*", "#", "?", "HOME"])
OPS = ["", "-", ":-", "=", ":=", "+", ":+", "?", ":?", "#", "##", "%", "%%", "/", "//",
       "/#", "/%", "^", "^^", ",", ",,", ":", ": ", "@Q", "@P", "@E", "@A", "@a"]
LITERALS = st.sampled_from(["a", "b.txt", "-n", "--x=1", "HEAD~1", "a=b", "x/y", "1", "0",
                            "*", "?", "~", "f", "}", "{", "'", '"', "\\", "$", "a$", ""])
ARITH = st.sampled_from(["1", "x", "y+1", "a[$(id)]", "v", "z", "1:2", "-1", "x[0]", "$x"])
ANSI = st.sampled_from(["a", "\\x24(id)", "\\x5b\\x24(id)\\x5d", "\\x60id\\x60", "\\x27",
                        "a\\x5b1\\x5d", "\\n", "\\x7d"])


def _expansion(word: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    name = VAR
    return st.one_of(
        st.builds(lambda n: f"${n}", name),
        st.builds(lambda n, o, w: f"${{{n}{o}{w}}}", name, st.sampled_from(OPS), word),
        st.builds(lambda n: f"${{#{n}}}", name),
        st.builds(lambda n: f"${{!{n}}}", name),
        st.builds(lambda n, a: f"${{{n}[{a}]}}", name, ARITH),
        st.builds(lambda n, a, b: f"${{{n}:{a}:{b}}}", name, ARITH, ARITH),
    )


def _word(cmd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            _expansion(inner),
            st.builds(lambda w: f'"{w}"', inner),
            st.builds(lambda w: f"'{w}'", inner),
            st.builds(lambda a, b: a + b, inner, inner),
            st.builds(lambda c: f"$({c})", cmd),
            st.builds(lambda c: f"`{c}`", cmd),
            st.builds(lambda a: f"$(({a}))", ARITH),
            st.builds(lambda a: f"$[{a}]", ARITH),
            st.builds(lambda a, b: f"{{{a},{b}}}", inner, inner),
        )

    base = st.one_of(LITERALS, st.builds(lambda a: f"$'{a}'", ANSI))
    return st.recursive(base, extend, max_leaves=4)


def _command(depth: int) -> st.SearchStrategy[str]:
    inner: st.SearchStrategy[str] = (
        st.sampled_from(PAYLOADS + ALLOWED_CMDS) if depth == 0 else _command(depth - 1))
    word = _word(inner)
    redirect = st.one_of(
        st.sampled_from(["> out", "2>&1", "< f", ">> out", "&> out", "2>/dev/null"]),
        st.builds(lambda w: f"<<< {w}", word),
        st.builds(lambda w: f"> {w}", word),
        st.builds(lambda c: f"< <({c})", inner),
        st.builds(lambda c: f"> >({c})", inner),
        st.builds(lambda w: f"<<EOF\n{w}\nEOF\n", word),
    )
    name = st.sampled_from([*sorted(ALLOWED_NAMES), "bash -c", "sh -c", "env", "command",
                            "time", "X=1"])
    simple = st.builds(
        lambda n, args, redirs: " ".join([n, *args, *redirs]),
        name, st.lists(word, max_size=3), st.lists(redirect, max_size=1))
    return st.one_of(simple, st.sampled_from(PAYLOADS + BUILTINS + ALLOWED_CMDS))


SEPARATORS = st.sampled_from([" ; ", " && ", " || ", " | ", " & ", "\n"])


@st.composite
def adversarial(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_command(1), min_size=1, max_size=3))
    out = parts[0]
    for part in parts[1:]:
        out += draw(SEPARATORS) + part
    if draw(st.booleans()):
        out = draw(st.sampled_from(["( {} )", "{{ {}; }}", "! {}", "echo $({})"])).format(out)
    return out


PLAIN_WORD = st.one_of(
    st.sampled_from(["a", "b.txt", "-n", "--x=1", "HEAD~1", "x/y", "1", "'a b'", '"a b"',
                     '"$HOME"', "$y", "${z}", "${#z}", "${u:-d}", "${z%f}", "${z#ab}",
                     "'$(id)'", "\\$x", '"${z^^}"', "${u-$y}"]),
)
PLAIN_CMD = st.one_of(
    st.builds(lambda n, args: " ".join([n, *args]),
              st.sampled_from(["echo", "ls", "cat", "grep -n a", "wc -l"]),
              st.lists(PLAIN_WORD, min_size=1, max_size=3)),
    st.builds(lambda args: " ".join(["git diff", *args]),
              st.lists(st.sampled_from(["a", "HEAD~1", "--stat", "'a b'", "--", "x/y"]),
                       min_size=1, max_size=3)),
    st.sampled_from(["git status", "true", "ls"]),
)


@st.composite
def plain(draw: st.DrawFn) -> str:
    parts = draw(st.lists(PLAIN_CMD, min_size=1, max_size=3))
    out = parts[0]
    for part in parts[1:]:
        out += draw(st.sampled_from([" ; ", " && ", " | ", "\n"])) + part
    return out


# -- running bash ------------------------------------------------------------------------------


class Sandbox:
    """A scratch dir, shims that log and exit, and bash under strace as nobody."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.work = root / "work"
        self.logs = root / "logs"
        self.bin.mkdir()
        for name in SHIMS:
            shim = self.bin / name
            # printf is a builtin of /bin/sh: nothing else is executed by a shim
            shim.write_text(
                f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {self.logs}/shims 2>/dev/null\n'
                'exit 0\n')
            shim.chmod(0o755)
        for name in ("bash", "sh"):
            (self.bin / name).symlink_to("/bin/bash")

    def run(self, command: str) -> tuple[list[str], list[str]]:
        """Run ``command``; the names executed (strace) and the commands bash ran (xtrace)."""
        for path in (self.work, self.logs):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            os.chown(path, NOBODY, NOBODY)
        (self.work / "f").write_text("a\n")
        (self.work / "s").write_text("id\n")
        strace_log = self.logs / "strace"
        xtrace_log = self.logs / "xtrace"
        env = {"PATH": str(self.bin), "HOME": str(self.work), "LC_ALL": "C",
               "SHELLOPTS": "xtrace", "PS4": "\x1dXT> ", **ENV_VARS}
        with open(xtrace_log, "wb") as xtrace:
            env["BASH_XTRACEFD"] = str(xtrace.fileno())
            proc = subprocess.Popen(
                [STRACE, "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                 "-o", str(strace_log), "/bin/bash", "--noprofile", "--norc", "-c", command],
                cwd=self.work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(xtrace.fileno(),), user=NOBODY,
                group=NOBODY, extra_groups=[], start_new_session=True)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # attempts count too (a line may be split by "<unfinished ...>" under -f)
        execs = re.findall(r'execve\("([^"]*)"', strace_log.read_text())
        traced = [_traced_name(line) for line in xtrace_log.read_bytes().decode(
            "utf-8", "replace").split("\n") if line.startswith("\x1d")]
        return [Path(p).name for p in execs[1:]], [n for n in traced if n]


ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^]]*\])?\+?=")
TOKEN = re.compile(r"(?:[^\s']|'[^']*')+")


def _traced_name(line: str) -> str | None:
    """The command name of one xtrace line (after any prefix assignments)."""
    for token in TOKEN.findall(line.lstrip("\x1d").removeprefix("XT> ")):
        if not ASSIGNMENT.match(token):
            return token.replace("'", "")
    return None


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    require_root()
    require_tools("strace")
    root = Path(tempfile.mkdtemp(prefix="cmdcheck-bash-"))
    root.chmod(0o755)
    try:
        yield Sandbox(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_harness_sees_builtins_and_execs(sandbox: Sandbox) -> None:
    """The recorders catch what the test relies on: an exec anywhere, and builtins."""
    execs, traced = sandbox.run('echo "$(id)"; eval true; x=1 command ls <(curl a)')
    assert {"id", "ls", "curl"} <= set(execs), execs
    assert {"echo", "id", "eval", "true", "command", "curl"} <= set(traced), traced
    execs, traced = sandbox.run("echo ${z:x}")  # arithmetic on $x runs its $(id)
    assert "id" in execs and "id" in traced, (execs, traced)


KNOWN = [  # bypasses found by review or by this test
    "echo ${u-`id`}",
    "echo ${u:=`id`}",
    "echo ${q:=$'a\\x5b\\x24(id)\\x5d'} ${z:=abc} ${z:q}",
    "echo ${z:x}",
    "echo `echo \\`id\\``",
    "echo `echo \\$(id)`",
    'echo $"$(id)"',
]


@pytest.mark.parametrize("command", KNOWN)
def test_known_bypasses_are_held_and_real(sandbox: Sandbox, command: str) -> None:
    """Each one is held, and each one really runs `id` in bash (the harness would see it)."""
    assert not check_command(command, ALLOW).allowed
    execs, traced = sandbox.run(command)
    assert "id" in execs and "id" in traced, (execs, traced)


def test_differential_against_bash(sandbox: Sandbox) -> None:
    stats: Counter[str] = Counter()

    @settings(max_examples=500, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(st.one_of(plain().map(lambda c: (c, True)), adversarial().map(lambda c: (c, False))))
    def run(case: tuple[str, bool]) -> None:
        command, is_plain = case
        verdict = check_command(command, ALLOW, workspace=str(sandbox.work))
        kind = "plain" if is_plain else "adversarial"
        stats[kind] += 1
        event(f"{kind} {'approved' if verdict.allowed else 'held'}")
        if not verdict.allowed:
            return
        stats[f"{kind} approved"] += 1
        execs, traced = sandbox.run(command)
        bad_execs = [name for name in execs if name not in ALLOWED_NAMES]
        bad_traced = [name for name in traced if name not in ALLOWED_NAMES]
        assert not bad_execs and not bad_traced, (
            f"checker approved {command!r} but bash ran {bad_execs or bad_traced}")

    run()
    assert stats["plain"] >= 100, stats
    assert stats["plain approved"] >= 0.9 * stats["plain"], stats
    assert stats["adversarial approved"] >= 5, stats  # the bash side is really exercised
