"""The proxy process itself: privilege drop, no readable memory, lifeline, failing closed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from corral.policy import resolve
from corral.proxy import agent_env, trust_bundle

from .conftest import RunningProxy, curl, start_proxy, wait_for

POLICY = """
name: svc
egress:
  - {host: api.corral.test, action: inspect, tls_ca: OUTSIDE_CA, allow_private: true}
"""


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_child_runs_unprivileged_and_not_dumpable(make_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy: RunningProxy = make_proxy(POLICY)
    pid = proxy.handle.pid
    status = _status(pid)
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].strip() == ""
    assert status["NoNewPrivs"].strip() == "1"
    assert status["CapEff"].strip("0\n") == ""
    # Not dumpable: even a process with the proxy's own uid cannot read its memory or fds.
    for target in (f"/proc/{pid}/mem", f"/proc/{pid}/environ", f"/proc/{pid}/fd/0"):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", target],
            capture_output=True, text=True,
        )
        assert done.returncode != 0 and "Permission denied" in done.stderr, target
    # Only the sockets it needs are open: no inherited files (audit DB, policies, secrets).
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if int(fd) <= 2:
            continue  # stdio (stderr stays for crash reports)
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert link.startswith(("socket:", "anon_inode:", "pipe:", "/dev/null")), link


class Exploding:
    """The real resolved policy, except that deciding one path raises."""

    def __init__(self, rp: Any) -> None:
        self.rp = rp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rp, name)

    def decide_request(self, host: str, port: int, method: str, path: str) -> Any:
        if path == "/boom":
            raise RuntimeError("matcher bug")
        return self.rp.decide_request(host, port, method, path)


def test_decision_exception_denies(make_proxy, tmp_path: Path, outside) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("OUTSIDE_CA", str(outside.ca)))
    proxy = make_proxy(POLICY, policy=Exploding(resolve([str(path)], use_cache=False)))
    ok = curl(proxy, "https://api.corral.test/echo")
    assert ok.returncode == 0 and '"path": "/echo"' in ok.stdout
    boom = curl(proxy, "-i", "https://api.corral.test/boom")
    assert "HTTP/1.1 403" in boom.stdout and "fails closed" in boom.stdout
    assert proxy.sink.of("proxy.deny", path="/boom", rule="default deny")


class FailingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, /, **fields: Any) -> None:
        if event_type == "proxy.inspect":
            raise OSError("disk full")
        self.events.append((event_type, fields))

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [f for t, f in self.events if t == kind]


def test_audit_failure_stops_the_request(make_proxy, outside) -> None:  # type: ignore[no-untyped-def]
    proxy: RunningProxy = make_proxy(POLICY)
    sink = FailingSink()
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    handle, pem = start_proxy(proxy.policy, [listener], audit=sink,
                              overrides={"api.corral.test": [outside.ip]})
    try:
        proxy.port = listener.getsockname()[1]
        proxy.env = agent_env(proxy.policy, proxy.port, bundle_path=str(proxy.bundle))
        proxy.bundle.write_bytes(trust_bundle(pem))
        done = curl(proxy, "-i", "https://api.corral.test/echo")
        assert done.stdout.count("HTTP/1.1 200") == 1  # the CONNECT answer only
        assert '"path"' not in done.stdout  # no response body reached the agent
    finally:
        handle.stop()
        listener.close()


def test_proxy_exits_when_launcher_dies(tmp_path: Path, corral_env: dict[str, str]) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent("""
        import os, socket
        from corral.policy import resolve
        from corral.runtime.proxyproc import ProxyProcess
        proc = ProxyProcess(resolve([], use_cache=False))
        proc.configure({})
        proc.start([socket.create_server(("127.0.0.1", 0))], [], run_as=(65534, 65534))
        print(proc.pid, flush=True)
        os._exit(0)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30, cwd="/work/main" if Path("/work/main").is_dir() else None)
    pid = int(done.stdout.strip())

    def gone() -> bool:
        try:
            return _status(pid)["State"].startswith("Z")
        except FileNotFoundError:
            return True

    assert wait_for(gone, timeout=5)
    time.sleep(0)


def test_real_audit_trail_as_sink(tmp_path: Path, outside, corral_env) -> None:  # type: ignore[no-untyped-def]
    """The launcher hands the proxy a ``corral.audit`` trail: events land, chained, in SQLite."""
    import socket

    from corral.audit import AuditStore
    from corral.audit.query import iter_events, open_read

    store = AuditStore.open(tmp_path / "audit.db")
    trail = store.trail("proxy-test")
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("OUTSIDE_CA", str(outside.ca)))
    policy = resolve([str(path)], use_cache=False)
    listener = socket.create_server(("127.0.0.1", 0))
    handle, pem = start_proxy(policy, [listener], audit=trail,
                              overrides={"api.corral.test": [outside.ip]})
    try:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(trust_bundle(pem))
        proxy = RunningProxy(listener.getsockname()[1], policy, None,  # type: ignore[arg-type]
                             bundle, agent_env(policy, listener.getsockname()[1],
                                               bundle_path=str(bundle)), handle)
        assert curl(proxy, "https://api.corral.test/echo").returncode == 0
        assert "403" in curl(proxy, "-i", "https://evil.corral.test/").stdout
    finally:
        handle.stop()
        listener.close()
    trail.close()
    store.close()
    con = open_read(tmp_path / "audit.db")
    kinds = [(e.type, e.data.get("host")) for e in iter_events(con, sandbox="proxy-test")]
    assert ("proxy.inspect", "api.corral.test") in kinds
    assert ("proxy.deny", "evil.corral.test") in kinds


def test_idle_agent_connection_is_closed(corral_env: dict[str, str]) -> None:
    import socket

    from corral.runtime.proxyproc import ProxyProcess

    listener = socket.create_server(("127.0.0.1", 0))
    handle = ProxyProcess(resolve([], use_cache=False))
    handle.configure({}, idle_timeout=0.5)
    handle.start([listener], [], run_as=(65534, 65534))
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET http://a.example/ HTTP/1.1\r\n")  # a head that never ends
            assert sock.recv(100) == b""  # closed by the proxy, not by our timeout
            assert 0.4 < time.monotonic() - started < 3
    finally:
        handle.stop()
        listener.close()
