"""``action: platform`` over ``inspect``: what the relay through corral server adds per request.

Real parts throughout: nginx over TLS in a network namespace this script creates (the outside
host: /echo a small JSON answer, /sse a static event stream), a real ``corral server`` on
loopback (SQLite) whose config opens the outside address to the relay, and real
``corral run --project`` sandboxes.
Each round runs one client inside a sandbox under one policy with two rules for the outside
host: ``/p/**`` is ``platform`` with a ``server:`` credential (the proxy streams to the relay,
which re-checks, injects, dials, and scrubs), everything else is ``inspect`` (the proxy dials
it). The client (Python's http.client through the proxy, one kept-alive connection) alternates
the two: REQUESTS pairs of GET /echo and GET /p/echo, then SSE_REQUESTS pairs of GET /sse and
GET /p/sse timed to the first ``data:`` byte. Pairs run back to back, so the machine's load
falls on both sides alike; what the relay adds is the median of the paired differences.

Run: .venv/bin/python bench/bench_platform.py   (root; writes bench/results/platform.json)
Targets: the median paired difference (platform - inspect) < 2 ms per request, < 1 ms to the
first SSE byte.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tests.proxy.conftest import _make_ca  # noqa: E402
from tests.server.conftest import Served, cli  # noqa: E402
from tests.server.test_launcher import Server  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_PLATFORM_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_PLATFORM_REQUESTS", "300"))
SSE_REQUESTS = int(os.environ.get("BENCH_PLATFORM_SSE", "100"))

CLIENT = r'''
import http.client, json, os, ssl, sys, time
from urllib.parse import urlsplit
ip, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy = urlsplit(os.environ["HTTPS_PROXY"])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx)
conn.set_tunnel(ip, 443)
def get(path):
    conn.request("GET", path)
    return conn.getresponse()
for _ in range(5):
    get("/echo").read()
for _ in range(5):
    get("/p/echo").read()
out = {"inspect": {"latency_ms": [], "sse_first_ms": []},
       "platform": {"latency_ms": [], "sse_first_ms": []}}
for i in range(n):
    for action, prefix in (("inspect", ""), ("platform", "/p"))[::1 if i % 2 else -1]:
        t = time.perf_counter()
        r = get(prefix + "/echo"); body = r.read()
        out[action]["latency_ms"].append((time.perf_counter() - t) * 1000)
        assert r.status == 200, (action, r.status, body[:500])
for i in range(m):
    for action, prefix in (("inspect", ""), ("platform", "/p"))[::1 if i % 2 else -1]:
        t = time.perf_counter()
        r = get(prefix + "/sse")
        assert r.status == 200, (action, r.status, r.read()[:500] if r.status != 200 else b"")
        while b"data:" not in r.read1(65536):
            pass
        out[action]["sse_first_ms"].append((time.perf_counter() - t) * 1000)
        r.read()
json.dump(out, open("/workspace/out.json", "w"))
'''


def _policy(ip: str, ca: Path) -> str:
    pem = ca.read_text().strip().replace("\n", "\n      ")
    return ("name: bench\ncredentials:\n  tok: {secret: \"server:tok\", header: Authorization, "
            f"format: \"Bearer {{secret}}\"}}\negress:\n"
            f"  - host: {ip}\n    ports: [443]\n    action: platform\n    credential: tok\n"
            f"    paths: [\"/p/**\"]\n    tls_ca: |\n      {pem}\n"
            f"  - host: {ip}\n    ports: [443]\n    action: inspect\n    allow_private: true\n"
            f"    tls_ca: |\n      {pem}\n")


def _outside(tmp: Path) -> tuple[str, Path, subprocess.Popen[bytes], str, str]:
    """nginx in a new network namespace: its address, CA, process, namespace and veth."""
    tag = secrets.token_hex(3)
    ns, veth_h, veth_n = f"corral-b-{tag}", f"crb{tag}h", f"crb{tag}n"
    octet = int(tag[:2], 16) % 250 + 1
    host_ip, ip = f"10.249.{octet}.1", f"10.249.{octet}.2"
    ca, cert, key = _make_ca(tmp, ip)
    for cmd in (["ip", "netns", "add", ns],
                ["ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_n],
                ["ip", "link", "set", veth_n, "netns", ns],
                ["ip", "addr", "add", f"{host_ip}/30", "dev", veth_h],
                ["ip", "link", "set", veth_h, "up"],
                ["ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", veth_n],
                ["ip", "-n", ns, "link", "set", veth_n, "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"]):
        subprocess.run(cmd, check=True)
    www = tmp / "www"
    www.mkdir()
    # a static SSE body: the time to its first byte is the path's, not the upstream's
    (www / "sse").write_bytes(b"".join(b"data: {\"n\": %d}\n\n" % i for i in range(20)))
    (www / "p").mkdir()
    (www / "p" / "sse").write_bytes((www / "sse").read_bytes())
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen {ip}:443 ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {www};
    location = /echo {{ default_type application/json; return 200 '{{"ok": true}}'; }}
    location = /p/echo {{ default_type application/json; return 200 '{{"ok": true}}'; }}
    location ~ /sse$ {{ default_type text/event-stream; }}
  }}
}}
""")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "nginx", "-c", str(conf), "-p", str(tmp),
                             "-g", "daemon off;"])
    deadline = time.monotonic() + 10
    while subprocess.run(["ip", "netns", "exec", ns, "curl", "-so", "/dev/null", "--cacert",
                          str(ca), f"https://{ip}/echo"]).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "nginx did not start"
        time.sleep(0.1)
    return ip, ca, proc, ns, veth_h


def _run(env: dict[str, str], tmp: Path, ip: str) -> dict[str, dict[str, list[float]]]:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "client.py").write_text(CLIENT)
    (ws / "out.json").unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "corral", "run", "--project", "shop",
                           "--workspace", str(ws), "--", "python3", "/workspace/client.py", ip,
                           str(REQUESTS), str(SSE_REQUESTS)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return dict(json.loads((ws / "out.json").read_text()))


def main() -> None:
    assert os.geteuid() == 0, "run as root (sandboxes and a network namespace)"
    tmp = Path(os.environ.get("BENCH_TMP") or tempfile.mkdtemp(prefix="corral-bench-platform-"))
    tmp.chmod(0o755)
    ip, ca, outside, ns, veth = _outside(tmp)
    from corral.server.crypto import generate_key_file
    from corral.server.db import Database
    from corral.server.migrate import upgrade

    kek = tmp / "kek"
    generate_key_file(kek)
    db_url = f"sqlite:///{tmp}/server.db"
    db = Database(db_url)
    upgrade(db.engine)
    db.dispose()
    server = Server(db_url, kek, tmp)
    server.config.write_text(f"kek_file: {kek}\nrelay:\n  allow_private: ['{ip}/32']\n")
    server.start()
    try:
        state, config = tmp / "state", tmp / "config"
        config.mkdir()
        (config / "config.yaml").write_text(f"project_allow_private: [{ip}/32]\n")
        env = {"CORRAL_HOME": str(state), "CORRAL_CONFIG": str(config),
               "CORRAL_SERVER": server.url,
               "CORRAL_TOKEN": Served(server.url, db_url, Path()).token()}
        cli("team", "create", "web", env=env)
        cli("project", "create", "shop", "--team", "web", env=env)
        cli("creds", "set", "tok", "--project", "shop", env=env, stdin="bench-secret-value")
        results: dict[str, dict[str, list[float]]] = {"inspect": {}, "platform": {}}
        (tmp / "bench.yaml").write_text(_policy(ip, ca))
        cli("policy", "push", str(tmp / "bench.yaml"), "--project", "shop", env=env)
        for _ in range(ROUNDS):
            for action, out in _run(env, tmp, ip).items():
                for key, values in out.items():
                    results[action].setdefault(key, []).extend(values)
    finally:
        server.stop()
        outside.terminate()
        outside.wait()
        subprocess.run(["ip", "link", "del", veth], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)

    def q(values: list[float], p: float) -> float:
        return round(statistics.quantiles(values, n=100)[p - 1], 3)

    table = {a: {"p50_ms": q(r["latency_ms"], 50), "p95_ms": q(r["latency_ms"], 95),
                 "sse_first_p50_ms": q(r["sse_first_ms"], 50)} for a, r in results.items()}
    def paired(key: str) -> float:
        return round(statistics.median(p - i for p, i in zip(
            results["platform"][key], results["inspect"][key], strict=True)), 3)

    added, added_sse = paired("latency_ms"), paired("sse_first_ms")
    summary = {"rounds": ROUNDS, "requests": REQUESTS, "sse_requests": SSE_REQUESTS,
               "loadavg": Path("/proc/loadavg").read_text().split()[:3],
               **table, "added_p50_ms": added, "added_sse_first_p50_ms": added_sse,
               "target_added_p50_ms": 2.0, "target_added_sse_first_ms": 1.0}
    print(json.dumps(summary, indent=2))
    out_dir = ROOT / "bench/results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "platform.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
