"""What a first-time user meets: starter policies, clear messages for common mistakes, --json
everywhere, plain tables when piped, ``corral run CMD -flags`` without ``--``, ``--home``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy import PolicyError
from corral.policy.load import load_policy

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")
BOX = set("─│┃━┏┓┗┛┡┩╇╈┼├┤┬┴╭╮╯╰")


def corral(env: dict[str, str], *args: str, cwd: Path | None = None,
           code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([CORRAL, *args], env={**os.environ, **env}, cwd=cwd, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done
    return done


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n   \n", "---\n", "~\n"])
def test_empty_policy_is_one_line_with_file_and_line(tmp_path: Path, corral_env: dict[str, str],
                                                     text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    done = corral(corral_env, "policy", "check", str(path), code=2)
    assert done.stderr.startswith(f"corral: {path}:1: ") and done.stderr.count("\n") == 1


@pytest.mark.parametrize(("body", "needle"), [
    ("egress:\n  - host: 10.0.0.0/8\n    action: direct\n", "CIDR ranges"),
    ("egress:\n  - host: a.example\n    action: direct\n    action: deny\n",
     "egress[0].action: duplicate key"),
])
def test_policy_messages(tmp_path: Path, corral_env: dict[str, str], body: str,
                         needle: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n" + body)
    assert needle in corral(corral_env, "policy", "check", str(path), code=2).stderr


def test_directory_is_not_called_missing(tmp_path: Path, corral_env: dict[str, str]) -> None:
    done = corral(corral_env, "policy", "check", str(tmp_path), code=2)
    assert "is a directory" in done.stderr and "no such" not in done.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda kids: st.lists(kids, max_size=4)
                 | st.dictionaries(st.sampled_from(["name", "egress", "host", "action", "limits",
                                                    "files", "x"]), kids, max_size=4),
                 max_leaves=12).map(json.dumps),
))
def test_any_document_is_loaded_or_refused_never_crashes(text: str) -> None:
    """The whole class behind ``KeyError: ('#nodes',)``: any text (JSON is YAML) either loads
    or raises ``PolicyError`` whose problems are one ``file:line: field: message`` line each."""
    try:
        load_policy("/nonexistent/p.yaml", text=text)
    except PolicyError as err:
        for problem in err.problems:
            assert "\n" not in problem and problem.startswith("/nonexistent/p.yaml")
            assert ".0." not in problem.split(": ")[1]  # egress[0].x, never egress.0.x


def test_policy_init_show_and_json(tmp_path: Path, corral_env: dict[str, str]) -> None:
    corral(corral_env, "policy", "init", cwd=tmp_path)
    text = (tmp_path / "policy.yaml").read_text()
    assert text.startswith("#") and text.count("\n#") > 10
    assert corral(corral_env, "policy", "init", cwd=tmp_path, code=2).stderr.count("\n") == 1
    checked = json.loads(corral(corral_env, "policy", "check", "--json", "policy.yaml",
                                cwd=tmp_path).stdout)
    assert checked == [{"source": "policy.yaml", "ok": True, "name": "my-agent", "rules": 3}]
    gh = corral(corral_env, "policy", "init", "--from", "builtin:github", "-").stdout
    (tmp_path / "gh.yaml").write_text(gh)
    corral(corral_env, "policy", "check", str(tmp_path / "gh.yaml"))
    assert "name: my-github" in gh  # composes with the original under its own name
    assert corral(corral_env, "policy", "show", "builtin:pypi").stdout.startswith("name: pypi")
    listed = json.loads(corral(corral_env, "policy", "list", "--json").stdout)
    assert any(d["name"] == "builtin:pypi" and d["description"] for d in listed)
    explained = json.loads(corral(corral_env, "policy", "explain", "--json", "-p", "policy.yaml",
                                  "https://api.example.com/admin/x", cwd=tmp_path).stdout)
    assert explained["request"]["action"] == "deny"
    for args in (["sandbox", "list", "--json"], ["creds", "list", "--json"]):
        assert isinstance(json.loads(corral(corral_env, *args).stdout), list)


def test_piped_tables_have_no_box_drawing(corral_env: dict[str, str]) -> None:
    for args in (["policy", "list"], ["policy", "resolve", "-p", "builtin:github"],
                 ["sandbox", "list"]):
        out = corral(corral_env, *args).stdout
        assert out and not BOX & set(out), out


@pytest.mark.parametrize(("args", "needle"), [
    (["policy", "explain", "https://[::1/x"], "not a valid URL"),
    (["audit", "list", "--since", "99999999999d"], "before 1970"),
    (["policy", "explain", "-X", "GE T", "https://a.example/"], "not an HTTP method"),
    (["mcp", "--upstream-proxy", "garbage"], "--upstream-proxy"),
    (["mcp", "--allow-origin", "garbage"], "--allow-origin"),
])
def test_malformed_values_are_named(corral_env: dict[str, str], args: list[str],
                                    needle: str) -> None:
    done = corral(corral_env, *args, code=2)
    assert needle in done.stderr and done.stderr.count("\n") == 1


def test_version_and_help(corral_env: dict[str, str]) -> None:
    assert corral(corral_env, "--version").stdout.startswith("corral ")
    top = corral(corral_env, "--help").stdout
    assert "--install-completion" in top and "run" in top
    assert "``" not in top, top  # a module docstring's developer line is not a command's help
    helped = corral(corral_env, "run", "--help").stdout
    for flag in ("--policy", "--workspace", "--home", "--env", "--upstream-proxy", "--help"):
        assert flag in helped


@pytest.mark.root
def test_run_takes_the_command_without_dashes_and_home_rules(tmp_path: Path,
                                                             corral_env: dict[str, str]) -> None:
    from conftest import require_root, require_tools

    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    env = {**corral_env, "CORRAL_HOMES": str(tmp_path / "homes")}
    assert corral(env, "run", "python3", "-c", "print(1)").stdout == "1\n"
    assert corral(env, "run", "ls", "-ld", "/workspace").stdout.startswith("d")
    missing = tmp_path / "no" / "such" / "home"
    done = corral(env, "run", "--home", str(missing), "true", code=125)
    assert "--home" in done.stderr and not (tmp_path / "no").exists()
    corral(env, "run", "--home", "agent1", "sh", "-c", "echo kept > ~/note")
    assert (tmp_path / "homes" / "agent1" / "note").read_text() == "kept\n"
    other = tmp_path / "others"
    other.mkdir()
    os.chown(other, 12345, 12345)
    assert "owned by uid 12345" in corral(env, "run", "--home", str(other), "true",
                                          code=125).stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    done = corral(env, "run", "-p", str(empty), "true", code=125)
    assert done.stderr.startswith(f"corral: {empty}:1: ")


@pytest.mark.parametrize("args", [["sandbox", "list"], ["sandbox", "gc"], ["audit", "list"],
                                  ["audit", "verify"], ["creds", "list"]])
def test_root_only_state_as_a_user_says_try_sudo(corral_env: dict[str, str],
                                                 args: list[str]) -> None:
    """Not root, against root's state: one line saying to try sudo, never a PermissionError."""
    import sys

    from conftest import require_root, require_tools

    require_root()
    require_tools("setpriv")
    Path(corral_env["CORRAL_HOME"]).mkdir(mode=0o700)  # as /var/lib/corral is
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "corral", *args],
                          env={**os.environ, **corral_env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 1, done
    assert lines[0].startswith("corral: ") and lines[0].endswith("(try sudo)"), lines
