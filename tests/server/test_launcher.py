"""``corral run --project`` against a real ``corral server`` process (SQLite and PostgreSQL):
the project's policy pulled and trusted only as PLATFORM.md allows, local input that widens
refused, the run registered, live, its deny and injection events on the server and verified,
the server stopped mid-run and restarted with the trail complete (no gap, no duplicate), a
kill from the server, and the offline rule (cached policy, require-server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy.conftest import Outside, outside  # noqa: F401 (a fixture)

from tests.conftest import require_root, require_tools
from tests.server.conftest import VENV_BIN, Served, cli, free_port

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SECRET = "corral-launcher-secret-" + os.urandom(6).hex()


class Server:
    """``corral server`` on a fixed loopback port, so it can be stopped and started again."""

    def __init__(self, db_url: str, kek: Path, tmp: Path) -> None:
        self.port, self.db_url, self.tmp = free_port(), db_url, tmp
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "server.yaml"
        self.config.write_text(f"kek_file: {kek}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "CORRAL_DB_URL": self.db_url, "CORRAL_HOME": str(self.tmp / "srv")}
        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([str(VENV_BIN / "corral"), "server", "--listen",
                                      f"127.0.0.1:{self.port}", "--config", str(self.config)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, (self.tmp / "server.log").read_text()
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "corral server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@pytest.fixture
def corral_server(db_url: str, kek_file: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(db_url, kek_file, tmp_path)
    server.start()
    yield server
    server.stop()


def _policy(host: Outside, name: str = "shop-policy") -> str:
    pem = host.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: {name}
egress:
  - host: {host.ip}
    ports: [443]
    action: inspect
    paths: ["/echo"]
    credential: tok
    tls_ca: |
      {pem}
  - host: {host.ip}
    ports: [443]
    action: deny
    reason: only /echo
credentials:
  tok: {{secret: tok, header: Authorization, format: "Bearer {{secret}}", env: TOK}}
limits: {{memory: 1GiB}}
"""


def _setup(server: Server, host: Outside, corral_env: dict[str, str], tmp: Path,
           *, require_server: bool = False) -> dict[str, str]:
    """Team, project, agent and policy on the server; the launcher's env and local secret."""
    owner = Served(server.url, server.db_url, Path()).token()
    env = {**corral_env, "CORRAL_SERVER": server.url, "CORRAL_TOKEN": owner,
           "CORRAL_HEARTBEAT_S": "0.3"}
    Path(corral_env["CORRAL_CONFIG"], "config.yaml").write_text(
        f"project_allow_private: [{host.ip}/32]\n")
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web",
        *(["--require-server"] if require_server else []), env=env)
    cli("agent", "create", "bot", "--project", "shop", env=env)
    policy = tmp / "shop.yaml"
    policy.write_text(_policy(host))
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    cli("creds", "set", "tok", env=env, stdin=SECRET)
    return env


def _run(env: dict[str, str], *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", "run", *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
                          **kw)


def _popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "corral", "run", *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _runs(env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    out = cli("sandbox", "list", "--project", "shop", "--json", *extra, env=env).stdout
    return list(json.loads(out)["runs"])


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _server_events(env: dict[str, str], run: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=env["CORRAL_SERVER"] + "/api/v1", timeout=30, headers={
            "Authorization": f"Bearer {env['CORRAL_TOKEN']}"}) as client:
        got = client.get("/projects/shop/audit", params={"run": run, "limit": 5000}).json()
    return list(got["events"])


def _local_events(env: dict[str, str], sandbox: str) -> list[tuple[int, str]]:
    import sqlite3

    con = sqlite3.connect(Path(env["CORRAL_HOME"]) / "audit.db")
    try:
        return list(con.execute("SELECT seq, hash FROM events WHERE sandbox=? ORDER BY seq",
                                (sandbox,)))
    finally:
        con.close()


def test_project_run_end_to_end(corral_server: Server, outside: Outside,  # noqa: F811
                                corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    env = _setup(corral_server, outside, corral_env, tmp_path)
    ip = outside.ip
    script = (f"curl -s -o /dev/null -w 'inspect=%{{http_code}}\\n' https://{ip}/echo; "
              f"curl -s -o /dev/null -w 'deny=%{{http_code}}\\n' https://{ip}/other")
    done = _run(env, "--project", "shop", "--agent", "bot", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inspect=200", "deny=403"], done
    (run,) = _runs(env, "--all")
    assert run["status"] == "ended" and run["agent"] == "bot" and run["exit_status"] == 0
    events = _server_events(env, run["id"])
    types = [e["type"] for e in events]
    assert "proxy.deny" in types and "credential.inject" in types, types
    assert types[-1] == "trail.close"
    assert [e["hash"] for e in events] == [h for _, h in _local_events(env, run["sandbox"])]
    assert not list(Path(env["CORRAL_HOME"], "leftovers").glob("*.json"))
    verify = cli("audit", "verify", "--project", "shop", env=env)
    assert verify.stdout.startswith(f"ok: {len(events)} events in 1 runs of shop")
    assert SECRET not in json.dumps(events)

    # Live, then the server stopped mid-run and started again: the trail arrives whole.
    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 0, 0)
    loop = (f"curl -s -o /dev/null https://{ip}/a; touch /workspace/one; "
            "while [ ! -e /workspace/go ]; do sleep 0.1; done; "
            f"for i in 1 2 3 4 5; do curl -s -o /dev/null https://{ip}/b$i; done; "
            "touch /workspace/two; while [ ! -e /workspace/end ]; do sleep 0.1; done")
    proc = _popen(env, "--project", "shop", "--workspace", str(ws), "--", "sh", "-c", loop)
    try:
        live = _wait(lambda: _runs(env), "the run to be live")
        assert live[0]["status"] == "running"
        _wait(lambda: (ws / "one").exists(), "the first request")
        corral_server.stop()
        (ws / "go").touch()
        _wait(lambda: (ws / "two").exists(), "the requests made while the server was down")
        time.sleep(1.0)  # a few shipping rounds fail meanwhile
        corral_server.start()
        # The requests made while it was down reach it while the run lives (not with its end).
        _wait(lambda: sum(e["type"] == "proxy.deny" for e in
                          _server_events(env, live[0]["id"])) == 6, "the trail to catch up")
        (ws / "end").touch()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "the server is back" in err
    shipped = _server_events(env, live[0]["id"])
    local = _local_events(env, live[0]["sandbox"])
    assert [(e["seq"], e["hash"]) for e in shipped] == local  # no gap, no duplicate
    assert [e["seq"] for e in shipped] == list(range(1, len(local) + 1))
    assert sum(e["type"] == "proxy.deny" for e in shipped) == 6
    assert cli("audit", "verify", "--project", "shop", env=env).returncode == 0

    # A kill from the server ends the run within a heartbeat, and the run says why.
    proc = _popen(env, "--project", "shop", "--", "sleep", "120")
    try:
        live = _wait(lambda: _runs(env), "the run to be live")
        cli("sandbox", "kill", live[0]["id"], "--reason", "over budget", env=env)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "killed from the server: over budget" in err, err
    ended = next(r for r in _runs(env, "--all") if r["id"] == live[0]["id"])
    assert ended["status"] == "ended" and "over budget" in (ended["end_reason"] or "")


def test_local_input_may_only_narrow(corral_server: Server, outside: Outside,  # noqa: F811
                                     corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    env = _setup(corral_server, outside, corral_env, tmp_path)
    wide = tmp_path / "wide.yaml"
    wide.write_text("name: wide\negress:\n  - host: example.com\n    action: inspect\n")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(f"name: narrow\negress:\n  - host: {outside.ip}\n    ports: [443]\n"
                      "    action: deny\n    paths: ['/echo']\nfiles:\n  hide: [/etc/hostname]\n"
                      "limits: {memory: 512MiB}\n")
    rwdir = tmp_path / "rw"
    rwdir.mkdir()
    cases = [
        (["-p", str(wide)], "wide.yaml:3: an egress rule for example.com (inspect)"),
        (["--allow", "example.org"], "--allow example.org: an egress rule for example.org"),
        (["--ro", "/etc"], "--ro /etc: files.read: /etc"),
        (["--rw", str(rwdir)], f"--rw {rwdir}: files.write"),
    ]
    for flags, named in cases:
        done = _run(env, "--project", "shop", *flags, "--", "true")
        assert done.returncode == 125, (flags, done.stderr)
        assert named in done.stderr and "widens it" in done.stderr, (flags, done.stderr)
    assert _runs(env, "--all") == []  # nothing registered
    done = _run(env, "--project", "shop", "-p", str(narrow), "--memory", "256MiB", "--",
                "sh", "-c", f"curl -s -o /dev/null -w '%{{http_code}}' https://{outside.ip}/echo"
                "; test -s /etc/hostname && echo ' shown' || echo ' hidden'")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["403", "hidden"], done.stdout


def test_server_down_at_start(corral_server: Server, outside: Outside,  # noqa: F811
                              corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    env = _setup(corral_server, outside, corral_env, tmp_path)
    corral_server.stop()
    done = _run(env, "--project", "shop", "--", "true")  # never pulled on this host
    assert done.returncode == 125 and "no policy of it was pulled" in done.stderr, done.stderr

    corral_server.start()
    assert _run(env, "--project", "shop", "--", "true").returncode == 0  # pulled and cached
    cache = Path(env["CORRAL_HOME"], "projects", "shop.json")
    assert cache.stat().st_mode & 0o777 == 0o600 and cache.parent.stat().st_mode & 0o777 == 0o700
    corral_server.stop()
    done = _run(env, "--project", "shop", "--", "sh", "-c", "echo offline")
    assert done.returncode == 0 and done.stdout == "offline\n", done.stderr
    assert "using the policy pulled" in done.stderr
    (left,) = Path(env["CORRAL_HOME"], "leftovers").glob("*.json")
    assert json.loads(left.read_text())["run"] is None  # registered later by audit push

    data = json.loads(cache.read_text())
    data["pulled_at"] -= 25 * 3600  # older than the default max_offline (24 h)
    cache.write_text(json.dumps(data))
    done = _run(env, "--project", "shop", "--", "true")
    assert done.returncode == 125 and "older than the project's max_offline" in done.stderr

    data["pulled_at"] = time.time()
    data["project"]["require_server"] = True
    cache.write_text(json.dumps(data))
    done = _run(env, "--project", "shop", "--", "true")
    assert done.returncode == 125 and "requires the server" in done.stderr, done.stderr
