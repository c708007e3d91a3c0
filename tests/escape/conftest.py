"""Fixtures for escape tests: sandboxes through the public API, the CLI, an "outside" netns.

Everything a test creates (sandboxes, network namespaces, servers, files outside /tmp) is
removed by a finalizer, also when the test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_root, require_tools

from escape.probes import PROBE

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    returncode: int
    out: str
    err: str

    @property
    def line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def probe_argv(kind: str, *args: object) -> list[str]:
    return ["/usr/bin/python3", "-c", PROBE, kind, *map(str, args)]


def host_probe(kind: str, *args: object, uid: int | None = None, netns: str | None = None,
               timeout: float = 20) -> str:
    """The same probe outside any sandbox (positive controls), optionally as ``uid``."""
    argv = probe_argv(kind, *args)
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout.strip()


@pytest.fixture
def privileged(corral_env: dict[str, str]) -> dict[str, str]:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    return corral_env


@pytest.fixture
def sandbox(privileged: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """Factory: ``sandbox(**spec_fields)`` -> an open ``Sandbox`` closed at teardown."""
    from corral.sandbox import Sandbox, SandboxSpec

    opened: list[Any] = []

    def make(**fields: Any) -> Any:
        sb = Sandbox.open(SandboxSpec(**fields))
        opened.append(sb)
        return sb

    yield make
    for sb in opened:
        sb.close()


def run_in(sb: Any, argv: list[str], *, timeout: float = 30, input: bytes | None = None) -> Result:
    proc = sb.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(input, timeout=timeout)
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def probe_in(sb: Any, kind: str, *args: object) -> str:
    return run_in(sb, probe_argv(kind, *args)).line


def in_netns(sb: Any, argv: list[str]) -> None:
    """Run a host tool (ip, nft, sysctl) as root inside the sandbox's netns (test setup)."""
    from corral.sandbox import _libc

    fd = sb.netns_fd
    subprocess.run(argv, check=True, capture_output=True, pass_fds=(fd,),
                   preexec_fn=lambda: _libc.setns(fd, _libc.CLONE_NEWNET))


def remove_netfilter(sb: Any) -> None:
    """The positive control: the same sandbox with only its nft rules gone."""
    in_netns(sb, ["nft", "delete", "table", "inet", "corral"])


@pytest.fixture
def corral(privileged: dict[str, str]) -> Callable[..., Result]:
    """Run the real ``corral run`` CLI: ``corral(args..., input=b"", timeout=60)``."""

    def run(*args: str, input: bytes | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> Result:
        full_env = {**os.environ, **privileged, **(env or {})}
        try:
            done = subprocess.run([sys.executable, "-m", "corral", "run", *args], input=input,
                                  capture_output=True, timeout=timeout, env=full_env,
                                  check=False)
        except subprocess.TimeoutExpired:  # the launcher was SIGKILLed: collect its leftovers
            subprocess.run([sys.executable, "-m", "corral", "sandbox", "gc"], env=full_env,
                           capture_output=True, check=False)
            raise
        return Result(done.returncode, done.stdout.decode(errors="replace"),
                      done.stderr.decode(errors="replace"))

    return run


class Outside:
    """A network namespace playing "a host on the internet", with servers on many ports."""

    V4 = "10.250.0.1"
    V6 = "fd00:250::1"

    def __init__(self, tmp: Path) -> None:
        self.name = f"corral-t-{secrets.token_hex(3)}"
        self.log = tmp / "outside.log"
        self.log.touch()
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable,
             str(Path(__file__).with_name("outside_server.py")), str(self.log)],
            stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        assert self.server.stdout.readline().strip() == "ready"

    def attach(self, sb: Any) -> None:
        """Give the sandbox a real path here: move its veth peer into this namespace."""
        in_netns(sb, ["ip", "link", "set", "c1", "netns", self.name])
        for cmd in ("addr add 10.255.255.1/30 dev c1", f"addr add {self.V4}/32 dev c1",
                    "addr add fd00:c0:ffff::1/64 dev c1 nodad",
                    f"addr add {self.V6}/128 dev c1 nodad", "link set c1 up"):
            subprocess.run(["ip", "-n", self.name, *cmd.split()], check=True)

    def contacts(self) -> list[str]:
        time.sleep(0.05)
        return self.log.read_text().splitlines()

    def close(self) -> None:
        self.server.kill()
        self.server.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def outside(privileged: dict[str, str], tmp_path: Path) -> Iterator[Outside]:
    o = Outside(tmp_path)
    try:
        yield o
    finally:
        o.close()
