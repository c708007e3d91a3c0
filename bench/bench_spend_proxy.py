"""Metered vs unmetered ``inspect`` through the proxy: the same streaming Chat Completions
request through two corral proxies, one whose rule has ``meter: openai`` (body read whole and
estimated, a reservation in the local ledger, ``include_usage`` added, the SSE response metered
as it passes, settled, an ``llm.usage`` event) and one without; both inject the credential.

nginx on loopback plays the provider: it answers POST /v1/chat/completions with a fixed
50-chunk SSE stream (~9 KB, a static file) ending in a usage chunk. ``hey`` drives each proxy
at concurrency 16 for DURATION; configs interleaved over ROUNDS rounds, medians reported, with
each proxy's CPU time per request (from /proc) beside its requests/s: on a loaded machine the
requests/s of both swing with everything else running, the CPU per request much less.
Target: metered requests/s >= 0.8x unmetered.

Run: .venv/bin/python bench/bench_spend_proxy.py   (root; writes bench/results/spend_proxy.json)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_proxy import INSPECT_IP, free_port, make_certs, start_corral, wait_port

from corral.spend import Tokens
from tests.spend.streams import EVENTS, sse

C = 16
DURATION = os.environ.get("BENCH_PROXY_DURATION", "5s")
ROUNDS = int(os.environ.get("BENCH_PROXY_ROUNDS", "3"))
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 200, "stream": True,
                   "messages": [{"role": "user", "content": "Say hello."}]})


def nginx(tmp: Path, cert: Path, key: Path, port: int) -> subprocess.Popen[bytes]:
    (tmp / "stream.sse").write_bytes(sse(EVENTS["openai.chat"](["word "] * 50, Tokens(12, 50))))
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen {INSPECT_IP}:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location = /v1/chat/completions {{
      default_type text/event-stream;
      alias {tmp}/stream.sse;
      error_page 405 =200 $uri;  # the static file answers a POST too
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"])
    wait_port(INSPECT_IP, port)
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (its /proc stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def passive_opens() -> int:
    """TCP connections accepted in this network namespace so far (/proc/net/snmp)."""
    names, values = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                     if line.startswith("Tcp:")]
    return int(values[names.index("PassiveOpens")])


def hey(url: str, proxy: str, body: Path, pid: int) -> tuple[float, float, float]:
    """(requests/s, the proxy's CPU microseconds per request, TCP connections accepted per
    1,000 requests) over one ``hey`` run. Accepted connections: the agent's to the proxy and
    the proxy's to nginx; with keep-alive on both sides there are ~32 per run, but Go's
    transport sometimes dials a new connection when no idle one is free and closes the
    surplus, and each new agent connection costs the proxy a CONNECT and a TLS handshake."""
    before, opens = cpu_seconds(pid), passive_opens()
    out = subprocess.run(["hey", "-z", DURATION, "-c", str(C), "-m", "POST", "-D", str(body),
                          "-T", "application/json", "-x", proxy, url],
                         capture_output=True, text=True, check=True).stdout
    cpu, opens = cpu_seconds(pid) - before, passive_opens() - opens
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    if not codes or any(c != "200" for c, _ in codes):
        raise RuntimeError(f"hey saw non-200 responses via {proxy}: {codes}\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    n = sum(int(n) for _, n in codes)
    return rps, cpu * 1e6 / n, opens * 1000 / n


def main() -> int:
    for tool in ("nginx", "hey"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench_spend_proxy: needs {tool}", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-spend-"))
    tmp.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    handles: list[Any] = []
    try:
        ca, cert, key = make_certs(tmp)
        port = free_port()
        procs.append(nginx(tmp, cert, key, port))
        body = tmp / "body.json"
        body.write_text(BODY)
        proxies, pids = {}, {}
        for name, extra in (("unmetered", ""), ("metered", ", meter: openai")):
            policy = tmp / f"{name}.yaml"
            policy.write_text(f"""
name: bench
egress:
  - {{host: "{INSPECT_IP}", ports: [{port}], action: inspect, credential: tok,
      tls_ca: {ca}{extra}}}
credentials:
  tok: {{secret: tok, header: Authorization, format: "Bearer {{secret}}"}}
budgets:
  - {{amount: 1000000, period: run}}
""")
            listener = socket.create_server(("127.0.0.1", 0))
            proxies[name] = f"http://127.0.0.1:{listener.getsockname()[1]}"
            handles.append(start_corral(policy, listener, None))
            pids[name] = handles[-1].pid
        url = f"https://{INSPECT_IP}:{port}/v1/chat/completions"
        samples: dict[str, list[float]] = {name: [] for name in proxies}
        cpu: dict[str, list[float]] = {name: [] for name in proxies}
        dials: dict[str, list[float]] = {name: [] for name in proxies}
        for _ in range(ROUNDS):
            for name, proxy in proxies.items():
                got, us, opened = hey(url, proxy, body, pids[name])
                samples[name].append(got)
                cpu[name].append(us)
                dials[name].append(opened)
        rps = {name: statistics.median(v) for name, v in samples.items()}
        cpu_us = {name: statistics.median(v) for name, v in cpu.items()}
        ratio = rps["metered"] / rps["unmetered"]
        # The proxy is one thread: on a machine where it is the bottleneck its requests/s is
        # 1 / CPU per request. That ratio holds on a loaded machine, where requests/s swings.
        cpu_ratio = cpu_us["unmetered"] / cpu_us["metered"]
        # The round with the fewest new connections is the steady state the target is about
        # (a new agent connection is a CONNECT and a TLS handshake, ~1 ms of proxy CPU).
        steady = {name: min(zip(dials[name], cpu[name], strict=True))[1] for name in proxies}
        steady_ratio = steady["unmetered"] / steady["metered"]
        print(f"{'config':<12}{'req/s (c=' + str(C) + ')':>16}{'proxy CPU us/req':>18}"
              f"{'new conns/1k req':>18}{'CPU, fewest conns':>19}")
        for name in proxies:
            print(f"{name:<12}{rps[name]:>16.0f}{cpu_us[name]:>18.0f}"
                  f"{statistics.median(dials[name]):>18.1f}{steady[name]:>19.0f}")
        print(f"metered / unmetered: {ratio:.2f}x req/s, {cpu_ratio:.2f}x by proxy CPU per "
              f"request, {steady_ratio:.2f}x by CPU in each one's round with the fewest new "
              f"connections (target >= 0.8)")
        out = Path(__file__).parent / "results" / "spend_proxy.json"
        out.write_text(json.dumps({"concurrency": C, "duration": DURATION, "rounds": ROUNDS,
                                   "rps": rps, "samples": samples, "ratio": ratio,
                                   "cpu_us_per_request": cpu_us, "cpu_samples": cpu,
                                   "cpu_ratio": cpu_ratio, "new_conns_per_1k": dials,
                                   "steady_cpu_us": steady, "steady_cpu_ratio": steady_ratio,
                                   "load_average": os.getloadavg()}, indent=2) + "\n")
        return 0
    finally:
        for handle in handles:
            handle.stop()
        for proc in procs:
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
