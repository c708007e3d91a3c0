"""``action: platform`` end to end: a real ``corral run --project`` sandbox, its proxy, the real
``corral server`` process and its relay, and the outside host over TLS in a test network
namespace. The relay injects a credential that exists only on the server; the response comes
back scrubbed and streamed; the secret is found nowhere on the launcher's side; a project
policy cannot make the relay reach loopback or a metadata address; a server gone is a 502."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy.conftest import Outside, outside  # noqa: F401 (a fixture)

from tests.conftest import require_root, require_tools
from tests.server.conftest import Served, cli
from tests.server.test_launcher import Server, _popen, _wait

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

SECRET = "corral-relay-secret-" + os.urandom(8).hex()


@pytest.fixture
def relay_server(db_url: str, kek_file: Path, tmp_path: Path, outside: Outside,  # noqa: F811
                 ) -> Iterator[Server]:
    server = Server(db_url, kek_file, tmp_path)
    # Only the outside host's address is opened to the relay; loopback and metadata are not.
    server.config.write_text(f"kek_file: {kek_file}\nrelay:\n  allow_private: "
                             f"['{outside.ip}/32']\n")
    server.start()
    yield server
    server.stop()


def _policy(host: Outside, server_port: int) -> str:
    pem = host.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: relay-policy
credentials:
  tok: {{secret: "server:tok", header: Authorization, format: "Bearer {{secret}}", env: TOK}}
egress:
  - host: {host.ip}
    ports: [443]
    action: platform
    credential: tok
    paths: ["/reflect", "/sse", "/echo"]
    tls_ca: |
      {pem}
  - host: 127.0.0.1
    ports: [{server_port}, 443]
    action: platform
    credential: tok
  - host: 169.254.169.254
    action: platform
    credential: tok
"""


def _files_with(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def _procs_with(needle: bytes) -> list[str]:
    """Processes whose environment or command line holds ``needle`` (this test's own process
    aside, which made the secret)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                if needle in Path(f"/proc/{pid}/{name}").read_bytes():
                    found.append(f"{pid}/{name}")
            except OSError:
                continue
    return found


def test_platform_relay_end_to_end(relay_server: Server, outside: Outside,  # noqa: F811
                                   corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    owner = Served(relay_server.url, relay_server.db_url, Path()).token()
    env = {**corral_env, "CORRAL_SERVER": relay_server.url, "CORRAL_TOKEN": owner,
           "CORRAL_HEARTBEAT_S": "0.3"}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    policy = tmp_path / "relay.yaml"
    policy.write_text(_policy(outside, relay_server.port))
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    cli("creds", "set", "tok", "--project", "shop", env=env, stdin=SECRET)

    ws = tmp_path / "ws"
    ws.mkdir()
    os.chown(ws, 0, 0)
    ip = outside.ip
    script = (
        f"curl -sS https://{ip}/reflect?mode=split > /workspace/reflect 2>/workspace/err; "
        f"curl -sN https://{ip}/sse | while IFS= read -r line; do "
        "echo \"$(date +%s.%N) $line\"; done > /workspace/sse; "
        f"curl -s -o /dev/null -w '%{{http_code}}' https://{ip}/other > /workspace/other; "
        f"curl --noproxy '' -s -w ' %{{http_code}}' https://127.0.0.1:{relay_server.port}/healthz "
        "> /workspace/loopback; "
        "curl -s -w ' %{http_code}' https://169.254.169.254/latest/meta-data/ > /workspace/meta; "
        "touch /workspace/one; while [ ! -e /workspace/go ]; do sleep 0.1; done; "
        f"curl -s -w ' %{{http_code}}' https://{ip}/echo > /workspace/down; "
        "touch /workspace/two")
    proc = _popen(env, "--project", "shop", "--workspace", str(ws), "--", "sh", "-c", script)
    try:
        _wait(lambda: (ws / "one").exists(), "the relayed requests")
        # While the run lives: no process on this machine (launcher, proxy, sandbox) holds
        # the secret in its environment or command line.
        assert _procs_with(SECRET.encode()) == []
        relay_server.stop()
        (ws / "go").touch()
        _wait(lambda: (ws / "two").exists(), "the request with the server gone")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if relay_server.proc is None:
            relay_server.start()

    reflect = (ws / "reflect").read_text()
    seen = {p.name: p.read_text()[:500] for p in ws.iterdir()}
    assert reflect, seen
    # The agent sent no Authorization: the relay injected it, and scrubbed its reflection.
    assert "authorization: Bearer corral-placeholder-tok" in reflect.lower().replace(
        "bearer", "Bearer"), reflect
    assert SECRET not in reflect

    lines = [ln.split(" ", 1) for ln in (ws / "sse").read_text().splitlines() if "data" in ln]
    assert len(lines) == 3, lines
    # three events 0.4 s apart do not arrive together: the response streams. (Each event's
    # last bytes wait for the next chunk: the scrubber holds back up to a needle's length,
    # here longer than an event, as the local proxy's does.)
    assert float(lines[2][0]) - float(lines[0][0]) > 0.3, lines

    assert (ws / "other").read_text() == "403"  # the launcher's own decision
    loop_body, _, loop_status = (ws / "loopback").read_text().rpartition(" ")
    assert loop_status == "403" and "relay.allow_private" in loop_body, loop_body
    meta_body, _, meta_status = (ws / "meta").read_text().rpartition(" ")
    assert meta_status == "403" and "169.254" in meta_body, meta_body
    down_body, _, down_status = (ws / "down").read_text().rpartition(" ")
    assert down_status == "502" and "unreachable" in down_body, down_body

    # The secret is nowhere on the launcher's side: its state (audit db, caches, leftovers),
    # its config, the run's workspace, and what the launcher printed.
    needle = SECRET.encode()
    for root in (Path(env["CORRAL_HOME"]), Path(env["CORRAL_CONFIG"]), ws):
        assert _files_with(root, needle) == [], root
    assert SECRET not in out and SECRET not in err
    time.sleep(0.1)
