"""Terminal layer: the agent cannot inject input into the user's terminal, and an interactive
program gets a working terminal (size, resize, colours, ^C) through the pty corral owns.

The "user's terminal" is a pty pair the test creates. The positive control runs the same
TIOCSTI probe on the host, as the sandbox uid, with that terminal as its controlling tty: there
the injection lands, so the probe is real.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import require_tools

from escape.conftest import probe_argv

pytestmark = pytest.mark.root


def _read_all(fd: int, timeout: float) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


@pytest.fixture
def user_terminal() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def _pending_input(slave: int) -> bytes:
    """What a program reading the user's terminal would get next (nothing, we hope)."""
    os.set_blocking(slave, False)
    try:
        return os.read(slave, 4096)
    except BlockingIOError:
        return b""
    finally:
        os.set_blocking(slave, True)


@pytest.mark.parametrize("interactive", [True, False], ids=["pty-mode", "pipe-mode"])
def test_tiocsti_cannot_reach_user_terminal(privileged, user_terminal, interactive: bool) -> None:
    master, slave = user_terminal
    env = {**os.environ, **privileged}
    stdin = slave if interactive else subprocess.DEVNULL
    corral = [sys.executable, "-m", "corral", "run", "--"]
    results = []
    for target in ("0", "1", "/dev/tty"):
        proc = subprocess.Popen([*corral, *probe_argv("tiocsti", target, "id\n")], stdin=stdin,
                                stdout=slave, stderr=slave, env=env, start_new_session=True)
        proc.wait(timeout=30)
        results.append(_read_all(master, 0.2).decode(errors="replace"))
        assert _pending_input(slave) == b"", target
    if not interactive:  # no terminal at all inside: nothing to inject into
        assert all("ok injected" not in r for r in results), results
    # control: the same probe, same uid, on the host with this terminal as its ctty
    done = subprocess.run(["setsid", "-c", "setpriv", "--reuid=2000999999", "--regid=2000999999",
                           "--clear-groups", *probe_argv("tiocsti", "0", "id\n")],
                          stdin=slave, stdout=subprocess.PIPE, text=True, timeout=30)
    assert done.stdout.strip() == "ok injected"
    assert _pending_input(slave) == b"id\n"


def test_tui_under_tmux(privileged) -> None:
    require_tools("tmux")
    sock = f"corral-test-{secrets.token_hex(3)}"
    tui = (
        "import os, signal, sys, time\n"
        "def size(*_):\n"
        "    c, r = os.get_terminal_size(1)\n"
        "    sys.stdout.write(f'size={c}x{r}\\r\\n'); sys.stdout.flush()\n"
        "signal.signal(signal.SIGWINCH, size)\n"
        "signal.signal(signal.SIGINT, lambda *_: (sys.stdout.write('got-ctrl-c\\r\\n'),"
        " sys.stdout.flush(), os._exit(3)))\n"
        "sys.stdout.write('\\x1b[31mred-text\\x1b[0m\\r\\n'); size()\n"
        "while True: time.sleep(0.1)\n"
    )
    env_prefix = " ".join(f"{k}={v}" for k, v in privileged.items())
    cmd = (f"{env_prefix} {sys.executable} -m corral run -- /usr/bin/python3 -c \"$TUI\"; "
           "echo EXIT=$?; stty -a | grep -o ' icanon' ; sleep 30")

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True,
                              check=True).stdout

    def wait_for(text: str, escapes: bool = False) -> str:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            pane = tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "t")
            if text in pane:
                return pane
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared:\n{pane}")

    env = {**os.environ, "TUI": tui}
    subprocess.run(["tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "t",
                    "-x", "80", "-y", "24", "sh", "-c", cmd], check=True, env=env)
    try:
        wait_for("size=80x24")
        assert "\x1b[31mred-text" in wait_for("red-text", escapes=True)
        tmux("resize-window", "-t", "t", "-x", "100", "-y", "30")
        wait_for("size=100x30")
        tmux("send-keys", "-t", "t", "C-c")
        wait_for("got-ctrl-c")
        wait_for("EXIT=3")
        wait_for(" icanon")  # the user's terminal is back in canonical (cooked) mode
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], check=False)
