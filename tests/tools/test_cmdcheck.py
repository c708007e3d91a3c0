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


# -- expansions bash evaluates where tree-sitter sees text (review findings) -------------------

REVIEW = [
    "echo ${x-`id`}",
    "echo ${x:=`cat /etc/hostname`}",
    "echo ${y:=$'a\\x5b\\x24(touch /workspace/p)\\x5d'} ${z:=abc} ${z:y}",
]
UNPROVABLE = ["echo ${z:y}", "echo ${z:1:2}", "echo ${a[$(ls)]}", "echo ${a[1]}", "echo ${!x}",
              "echo ${!x*}", "echo ${x=1}", "echo ${x@P}", "echo ${x-'a'}", "echo ${x-\"$(ls)\"}",
              "echo $((1))", "echo $[1]", "echo $\"x\"", "echo \"${x-`ls`}\"",
              "cat <<EOF\n$[1]\nEOF\n", "cat <<EOF\n${x-`ls`}\nEOF\n", "echo ${x: -1}"]
SAFE_EXPANSIONS = ["echo $x ${x} \"$x\" ${#x} $1 $@ $? ${x:-a} ${x#*/} ${x%.py} ${x//a/b}",
                   "echo ${x^^} \"${x:-$y}\" ${x+set} \"a$\" foo$ ${u-${v}}",
                   "cat <<EOF\nplain $x ${y}\nEOF\n", "cat <<'EOF'\n$[1] `ls` ${x:y}\nEOF\n"]


@pytest.mark.parametrize("command", REVIEW + UNPROVABLE)
def test_unprovable_expansions_held(command: str) -> None:
    verdict = check_command(command, ["echo *", "cat", "ls"])
    assert not verdict.allowed, command


@pytest.mark.parametrize("command", SAFE_EXPANSIONS)
def test_plain_expansions_allowed(command: str) -> None:
    verdict = check_command(command, ["echo *", "cat"])
    assert verdict.allowed, (command, verdict.reason)


# -- built-in denials: option forms that make a tool run programs -------------------------------

TOOLS = ["git *", "find *", "tar *", "sed *", "awk *", "python3 *", "ssh *", "rsync *",
         "make *", "sort *", "perl *", "vim *", "man *", "zip *"]
HATCHES = [
    ("git -c alias.x='!id' x", "git -c"),
    ("git --no-pager -c core.pager=id log", "git -c"),
    ("git --config-env=core.sshCommand=X fetch", "--config-env"),
    ("git --exec-path=/tmp status", "--exec-path"),
    ("git fetch --upload-pack=id origin", "--upload-pack"),
    ("git ls-remote --upl=id origin", "--upload-pack"),
    ("git clone -u id r", "clone -u"),
    ("git clone -c core.fsmonitor=id r", "clone -c"),
    ("git push --receive-pack=id", "--receive-pack"),
    ("git diff --ext-diff", "--ext-diff"),
    ("git difftool -x id", "difftool -x"),
    ("git rebase --exec id", "--exec"),
    ("git grep -Oid x", "grep -O"),
    ("git bisect run id", "bisect run"),
    ("git submodule foreach id", "submodule foreach"),
    ("git filter-branch --tree-filter id", "filter-branch"),
    ("git config core.pager id", "git config"),
    ("git init --template=t", "--template"),
    ("git $X status", "expanded"),
    ("find . -exec id ';'", "-exec"),
    ("find . -execdir id +", "-execdir"),
    ("find . -ok id ';'", "-ok"),
    ("find . -delete", "-delete"),
    ("find * -name x", "globbed"),
    ("tar -xf a.tar --to-command=id", "--to-command"),
    ("tar xIf id a.tar", "-I"),
    ("tar -cf a.tar --checkpoint-action=exec=id x", "--checkpoint-action"),
    ("sed 's/a/b/e' f", "s///e"),
    ("sed -n '1e id' f", "sed e"),
    ("sed 's/a/b/w /tmp/x' f", "s///w"),
    ("sed -f script f", "sed -f"),
    ("sed s f", "sed script the checker cannot read"),  # no delimiter: raised IndexError
    ("sed -e y f", "sed script the checker cannot read"),
    ("sed '1\\' f", "sed script the checker cannot read"),
    ("awk 'BEGIN{system(\"id\")}'", "system"),
    ("awk '{print | \"sh\"}' f", "'|'"),
    ("awk -f prog.awk f", "awk -f"),
    ("python3 -c 'import os'", "-c"),
    ("python3 -Ic 'import os'", "-c"),
    ("ssh -o ProxyCommand=id host", "-o"),
    ("rsync -avze id a b:", "-e"),
    ("rsync --rsh=id a b:", "--rsh"),
    ("make 'CC=$(shell id)'", "make"),
    ("make --eval='x:=$(shell id)'", "--eval"),
    ("sort --compress-program=id f", "--compress-program"),
    ("perl -e 'system 1'", "-e"),
    ("vim -c '!id' f", "-c"),
    ("man -P id ls", "-P"),
    ("zip -TT id a.zip f", "-TT"),
    ("env git -c a=b status", "git -c"),
    ("timeout 5 find . -exec id ';'", "-exec"),
]
ORDINARY = ["git status", "git log -c", "git diff HEAD~1 -- a.py", "git -C sub status",
            "git --no-pager log --oneline", "git config --get user.name", "git clone r",
            "find . -name '*.py' -type f", "tar -xzf a.tgz", "sed -n 's/[/]/x/gp' f",
            "sed -e 's/a/b/' -e '/x/d' f", "sed '1a text e w' f", "awk '{print $1}' f",
            "python3 t.py", "ssh host ls", "rsync -avz a b", "make test", "sort -u f",
            "perl t.pl", "vim f", "man ls", "zip -r a.zip d"]


@pytest.mark.parametrize(("command", "reason"), HATCHES)
def test_escape_hatches_held_even_if_pattern_matches(command: str, reason: str) -> None:
    verdict = check_command(command, [*TOOLS, "env *", "timeout *"])
    assert not verdict.allowed, command
    assert reason in verdict.reason, (command, verdict.reason)


@pytest.mark.parametrize("command", ORDINARY)
def test_ordinary_tool_uses_allowed(command: str) -> None:
    verdict = check_command(command, TOOLS)
    assert verdict.allowed, (command, verdict.reason)


def test_subcommand_pattern_does_not_match_global_options() -> None:
    for command in ("git -c x=y diff", "git --no-pager diff a", "git -C /tmp diff a"):
        assert not check_command(command, ["git diff *"]).allowed, command
    assert check_command("git diff a", ["git diff *"]).allowed


DENIED_LONG = {"git fetch": ["upload-pack"], "git push": ["receive-pack", "exec"],
               "git diff": ["ext-diff"], "tar -xf a": ["to-command", "use-compress-program"],
               "rsync": ["rsh", "rsync-path"], "sort": ["compress-program"],
               "split": ["filter"]}
DENIED_SHORT = {"python3": "c", "perl": "eE", "ssh": "oF", "rsync": "e", "tar": "IF"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DENIED_LONG)), st.data())
def test_any_abbreviation_of_a_denied_long_option_is_held(tool: str, data: st.DataObject) -> None:
    """GNU getopt and git accept any unambiguous prefix: every prefix is refused, wherever
    it stands among ordinary arguments, with or without =value."""
    name = data.draw(st.sampled_from(DENIED_LONG[tool]))
    prefix = name[:data.draw(st.integers(1, len(name)))]
    option = "--" + prefix + data.draw(st.sampled_from(["", "=id"]))
    args = data.draw(st.lists(st.sampled_from(["a", "-v", "--quiet", "b/c"]), max_size=3))
    args.insert(data.draw(st.integers(0, len(args))), option)
    command = " ".join([tool, *args, "id"])
    assert not check_command(command, [tool.split()[0] + " *"]).allowed, command


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(DENIED_SHORT)), st.data())
def test_denied_short_option_in_any_cluster_is_held(tool: str, data: st.DataObject) -> None:
    letter = data.draw(st.sampled_from(DENIED_SHORT[tool]))
    others = data.draw(st.text(alphabet="avzqnBOW", max_size=3))
    cut = data.draw(st.integers(0, len(others)))
    command = f"{tool} -{others[:cut]}{letter}{others[cut:]} id x"
    assert not check_command(command, [tool + " *"]).allowed, command
