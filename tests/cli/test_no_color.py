"""``NO_COLOR`` is honoured by every command that prints styled output, on a terminal too.

Each command runs as a real process on a pseudo-terminal (stdin, stdout and stderr), where rich
and uvicorn would colour. With ``NO_COLOR=1`` no SGR colour parameter (30-37, 40-47, 90-97,
100-107, 38/48 extended) may appear anywhere in what it prints; bold is not colour and is
allowed. The commands known to colour on a terminal are also run without ``NO_COLOR``, and must
colour there: otherwise the harness would not show that a terminal was seen at all.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_root

from corral.audit import AuditStore

pytestmark = pytest.mark.timeout(120)

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")
SGR = re.compile(rb"\x1b\[([0-9;:]*)m")
URL = "https://api.anthropic.com/v1/messages"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    colours: bool = False  # colours on a terminal without NO_COLOR
    root: bool = False
    until: bytes | None = None  # a server: stop it (SIGINT) once this was printed


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


CASES = {
    "help": Case(("--help",)),
    "run help": Case(("run", "--help")),
    "policy list": Case(("policy", "list")),
    "policy explain": Case(("policy", "explain", "-p", "builtin:anthropic", URL)),
    "audit list": Case(("audit", "list"), colours=True),  # a denial's row is red
    "sandbox list": Case(("sandbox", "list"), root=True),
    "run summary": Case(("run", "--", "true"), root=True),
    "server": Case(("server", "--listen", "127.0.0.1:{port}"), colours=True,
                   until=b"Uvicorn running"),
}


def _colours(out: bytes) -> list[bytes]:
    """The SGR sequences in ``out`` that set a colour."""
    found = []
    for match in SGR.finditer(out):
        params = {int(p) for p in re.split(rb"[;:]", match.group(1)) if p}
        if params & {*range(30, 38), *range(40, 48), *range(90, 98), *range(100, 108), 38, 48}:
            found.append(match.group())
    return found


def _on_a_terminal(args: list[str], env: dict[str, str], until: bytes | None) -> bytes:
    """Everything the command printed on a pty it had as stdin, stdout and stderr."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([CORRAL, *args], stdin=follower, stdout=follower, stderr=follower,
                            env=env, start_new_session=True)
    os.close(follower)
    out, deadline, stopped = b"", time.monotonic() + 60, until is None
    try:
        while time.monotonic() < deadline:
            if not stopped and until is not None and until in out:
                proc.send_signal(signal.SIGINT)
                stopped = True
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command and all it started closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=30) in (0, 130) or until is None, (args, out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return out


@pytest.fixture
def env(corral_env: dict[str, str]) -> dict[str, str]:
    """A fresh home whose audit trail holds one allowed and one denied request."""
    store = AuditStore.open()
    trail = store.trail("sb-1")
    trail.emit("sandbox.create", uid=60001, command=["true"], mode="run")
    trail.emit("proxy.allow", host="api.anthropic.com", rule="builtin:anthropic:4")
    trail.emit("proxy.deny", host="evil.example", rule="default deny")
    trail.close("exit 0")
    store.close()
    clean = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return {**clean, **corral_env, "TERM": "xterm-256color", "COLUMNS": "160"}


@pytest.mark.parametrize("name", list(CASES))
def test_no_color_means_no_colour(env: dict[str, str], name: str) -> None:
    case = CASES[name]
    if case.root:
        require_root()
    args = [a.format(port=_port()) for a in case.args]
    out = _on_a_terminal(args, {**env, "NO_COLOR": "1"}, case.until)
    assert out.strip(), (name, out)
    assert not _colours(out), (name, out)
    if case.colours:
        plain = _on_a_terminal(args, env, case.until)
        assert _colours(plain), ("no colour even without NO_COLOR", name, plain)


def test_the_colour_detector() -> None:
    found = _colours(b"\x1b[31mred\x1b[0m \x1b[1;38;5;9mx\x1b[0m")
    assert found == [b"\x1b[31m", b"\x1b[1;38;5;9m"]
    assert not _colours(b"\x1b[1mbold\x1b[0m \x1b[2m\x1b[22m \x1b[m")
