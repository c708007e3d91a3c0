"""``run_command`` hooks: what the launcher uses to put the proxy beside a run."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from conftest import require_root, require_tools

from corral.errors import CorralError
from corral.sandbox import SandboxSpec, run_command

pytestmark = pytest.mark.root


class TinyProxy:
    """A listener inside the sandbox netns answering every connection with a fixed reply."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.done = False

    def started(self, sb: Any) -> Mapping[str, str]:
        def listen() -> socket.socket:
            return socket.create_server(("127.0.0.1", sb.spec.proxy_port))

        self.sock = sb.run_in_netns(listen)

        def serve() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = self.sock.accept()  # type: ignore[union-attr]
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nvia-hook")
                    conn.close()

        threading.Thread(target=serve, daemon=True).start()
        return {"CORRAL_TEST_FROM_HOOK": "yes"}

    def finished(self, sb: Any) -> None:
        self.done = True
        if self.sock is not None:
            self.sock.close()


def test_hooks_start_a_listener_and_set_env(corral_env, capfd: pytest.CaptureFixture[str]) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "curl")
    hooks = TinyProxy()
    code = run_command(SandboxSpec(proxy_port=15001),
                       ["sh", "-c", "echo $CORRAL_TEST_FROM_HOOK; curl -s http://192.0.2.7/"],
                       hooks=hooks)
    assert code == 0
    assert capfd.readouterr().out.split() == ["yes", "via-hook"]
    assert hooks.done


class Failing:
    def started(self, sb: Any) -> Mapping[str, str]:
        raise CorralError("the egress proxy failed to start", exit_code=125)

    def finished(self, sb: Any) -> None:
        return None


def test_failing_hook_aborts_before_the_command(corral_env) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip")
    kinds: list[str] = []

    class Sink:
        def emit(self, sandbox_id: str, kind: str, fields: dict[str, Any]) -> None:
            kinds.append(kind)

    with pytest.raises(CorralError, match="proxy failed"):
        run_command(SandboxSpec(), ["true"], hooks=Failing(), audit=Sink())
    assert "exec.start" not in kinds  # the command never started
    assert kinds[-1] == "sandbox.teardown"


class SelfTerminating:
    def started(self, sb: Any) -> Mapping[str, str]:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)  # as if the user's `kill` came in during setup
        return {}

    def finished(self, sb: Any) -> None:
        return None


def test_sigterm_before_the_command_tears_down(corral_env) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip")
    from pathlib import Path

    from corral.sandbox.run import Terminated

    with pytest.raises(Terminated):
        run_command(SandboxSpec(), ["true"], hooks=SelfTerminating())
    reg = Path(corral_env["CORRAL_HOME"]) / "sandboxes"
    assert [p.name for p in reg.iterdir()] == [".lock"]
