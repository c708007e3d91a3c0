"""The live ``corral: denied ...`` line of an interactive ``corral run`` (stderr a real pty),
off with ``--quiet`` and when stderr is not a terminal; agent-controlled text is escaped."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from conftest import require_root, require_tools
from hypothesis import given, settings
from hypothesis import strategies as st
from test_idle import Terminal
from test_quick_flags import http_server  # noqa: F401  (fixture)

from corral.cli.denials import deny_line

pytestmark = pytest.mark.root


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    return {**os.environ, **corral_env}


def _policy(tmp_path: Path, port: int) -> Path:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"name: demo\negress:\n  - host: 127.0.0.2\n    ports: [{port}]\n"
                      "    action: deny\n    paths: ['/admin/**']\n"
                      f"  - host: 127.0.0.2\n    ports: [{port}]\n    action: inspect\n"
                      "    allow_private: true\n")
    return policy


def _script(port: int) -> str:
    return (f"curl -s -o /dev/null http://127.0.0.2:{port}/admin/x; "
            f"curl -s http://127.0.0.2:{port}/index.html; "
            f"curl -s -o /dev/null http://127.0.0.2:{port + 1}/other; echo finished")


def test_each_denial_is_a_live_line_on_the_terminal(env, tmp_path: Path,
                                                    http_server: int) -> None:  # noqa: F811
    port = http_server
    policy = _policy(tmp_path, port)
    term = Terminal(env, "-p", str(policy), "--", "sh", "-c", _script(port))
    assert term.wait() == 0, term.output
    out = term.output.decode()
    assert f"corral: denied GET 127.0.0.2:{port}/admin/x (rule {policy}:3)\r\n" in out
    assert f"corral: denied GET 127.0.0.2:{port + 1}/other (rule default deny)\r\n" in out
    assert out.count("corral: denied") == 2  # the allowed request has none
    assert out.index("admin/x (rule") < out.index("hello-from-host") < out.index("/other (")


def test_quiet_and_piped_stderr_have_no_live_lines(env, tmp_path: Path,
                                                   http_server: int) -> None:  # noqa: F811
    port = http_server
    policy = _policy(tmp_path, port)
    term = Terminal(env, "--quiet", "-p", str(policy), "--", "sh", "-c", _script(port))
    assert term.wait() == 0
    assert b"corral: denied" not in term.output and b"finished" in term.output
    piped = subprocess.run([sys.executable, "-m", "corral", "run", "-p", str(policy), "--",
                            "sh", "-c", _script(port)], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, check=False)
    assert "finished" in piped.stdout and "corral: denied" not in piped.stderr


_BIDI = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=300)
@given(host=_TEXT, path=_TEXT, method=_TEXT, rule=_TEXT,
       port=st.one_of(st.none(), st.integers(0, 70000)), count=st.one_of(st.none(), st.integers()))
def test_a_deny_line_is_one_line_without_control_characters(host, path, method, rule, port,
                                                            count) -> None:
    line = deny_line({"host": host, "path": path, "method": method, "rule": rule, "port": port,
                      "count": count})
    assert line.startswith("corral: denied ")
    assert not any(unicodedata.category(c) == "Cc" or unicodedata.bidirectional(c) in _BIDI
                   or c in "\u2028\u2029" for c in line), line
