"""Egress proxy throughput and added latency, against no proxy and against mitmproxy.

One run, all on loopback, nginx serving TLS (config written to a temp dir, started and stopped
here), `hey` as the load generator through each proxy with `-x`:
  (a) no proxy                      hey -> nginx
  (b) corral inspect + credential   hey -CONNECT-> corral (TLS terminated, header injected) -> nginx
  (b+) the same with its audit trail: every decision and injection relayed to a real audit
       store (SQLite on disk) and acknowledged as committed before the request goes on, as in
       a `corral run` (DESIGN: events are durable before the action completes)
  (c) mitmproxy 11.0.2 + addon      same header injected by a 3-line addon; own venv under
                                    bench/.venv-mitm (created here; never a corral dependency)
  (d) corral direct tunnel          1 GiB over TLS with curl, through the tunnel vs without
Requests/s at a fixed concurrency (C_RPS) and p50/p99 latency at concurrency 1; configs are
interleaved over ROUNDS rounds and medians reported (the machine is shared); bulk: best of 2.
Latencies come from hey's per-request CSV (``-o csv``, rounded by hey to 0.1 ms), as grouped
percentiles interpolated within their 0.1 ms step, the same way for every config.
Targets: (b) >= 5x (c) requests/s; (b) p50 added latency < 0.5 ms over (a); (d) >= 50% of (a).

Both corral proxies are started as ``corral run`` starts them (``ProxyProcess``: through the
pre-started helper when one answers, privileges dropped to nobody); the audited one gets the
audit store's trail, served through the relay exactly as in a run.

Run: .venv/bin/python bench/bench_proxy.py   (needs root for the proxy's uid drop; writes
bench/results/proxy.json)
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.policy import resolve
from corral.runtime.proxyproc import ProxyProcess

ROOT = Path(__file__).resolve().parent
MITM_VENV = ROOT / ".venv-mitm"
MITM_VERSION = "11.0.2"
C_RPS = 16
DURATION = os.environ.get("BENCH_PROXY_DURATION", "5s")
ROUNDS = int(os.environ.get("BENCH_PROXY_ROUNDS", "3"))  # interleaved; medians reported
BIG = 1024**3
INSPECT_IP, DIRECT_IP = "127.0.0.1", "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(INSPECT_IP)),
                                    x509.IPAddress(ipaddress.ip_address(DIRECT_IP))]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    for p in paths:
        p.chmod(0o644)
    return paths


def start_nginx(tmp: Path, cert: Path, key: Path, port: int) -> subprocess.Popen[bytes]:
    www = tmp / "www"
    www.mkdir()
    with open(www / "big", "wb") as fh:
        fh.truncate(BIG)  # sparse: no disk blocks used
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server {{
    listen {INSPECT_IP}:{port} ssl;
    listen {DIRECT_IP}:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {www};
    location = / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"])
    wait_port(INSPECT_IP, port)
    return proc


def wait_port(host: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not come up")


def hey(url: str, concurrency: int, proxy: str | None) -> dict[str, float]:
    """Requests/s from hey's summary (latency figures: ``hey_latency``)."""
    cmd = ["hey", "-z", DURATION, "-c", str(concurrency)]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    bad = [c for c, _ in codes if c != "200"]
    if bad or not codes:
        raise RuntimeError(f"hey saw non-200 responses via {proxy}: {codes}\n{out}")
    return {"rps": rps}


def grouped_percentile(values: list[float], q: float, step: float) -> float:
    """The q-th percentile of values rounded to ``step``, interpolated within its step.

    hey reports each latency rounded to 0.1 ms; a plain median of such values can only move in
    0.1 ms jumps. Treating each reported value v as the interval [v - step/2, v + step/2) and
    interpolating inside the interval that holds the percentile (the grouped-data median)
    recovers the sub-step position from how the samples split between neighbouring steps.
    """
    counts: dict[int, int] = {}
    for v in values:
        k = round(v / step)
        counts[k] = counts.get(k, 0) + 1
    rank, below = len(values) * q / 100, 0
    for k in sorted(counts):
        if below + counts[k] >= rank:
            return (k - 0.5) * step + (rank - below) / counts[k] * step
        below += counts[k]
    return max(values)


def hey_latency(url: str, proxy: str | None) -> dict[str, float]:
    """p50/p99 at concurrency 1 from hey's per-request CSV (``-o csv``), in ms."""
    cmd = ["hey", "-z", DURATION, "-c", "1", "-o", "csv"]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines()[1:] if line[:1].isdigit()]
    bad = {r[6] for r in rows if r[6] != "200"}
    if bad or not rows:
        raise RuntimeError(f"hey saw non-200 responses via {proxy}: {sorted(bad)}")
    ms = [float(r[0]) * 1000 for r in rows]
    return {"p50_ms": grouped_percentile(ms, 50, 0.1), "p99_ms": grouped_percentile(ms, 99, 0.1),
            "p50_rounded_ms": statistics.median(ms), "requests": len(ms)}


def curl_speed(url: str, ca: Path, proxy: str | None) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "--cacert", str(ca), "-w", "%{speed_download}"]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"]}).stdout
    return float(out) / 1e6  # MB/s


def ensure_mitm() -> Path | None:
    mitmdump = MITM_VENV / "bin" / "mitmdump"
    if mitmdump.exists():
        return mitmdump
    subprocess.run([sys.executable, "-m", "venv", str(MITM_VENV)], check=True)
    done = subprocess.run([str(MITM_VENV / "bin" / "pip"), "install", "-q",
                           "--disable-pip-version-check", f"mitmproxy=={MITM_VERSION}"])
    return mitmdump if done.returncode == 0 and mitmdump.exists() else None


def start_mitm(tmp: Path, ca: Path, port: int) -> subprocess.Popen[bytes] | None:
    mitmdump = ensure_mitm()
    if mitmdump is None:
        return None
    addon = tmp / "inject.py"
    addon.write_text(
        "def request(flow):\n"
        "    flow.request.headers['Authorization'] = 'Bearer bench-secret'\n"
    )
    proc = subprocess.Popen(
        [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port), "-s", str(addon),
         "--set", f"confdir={tmp / 'mitm'}", "--set", f"ssl_verify_upstream_trusted_ca={ca}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port("127.0.0.1", port, timeout=30)
    return proc


def start_corral(policy: Path, listener: socket.socket, audit: Any) -> ProxyProcess:
    """A corral proxy on ``listener``, started as ``corral run`` starts one."""
    proc = ProxyProcess(resolve([str(policy)], use_cache=False))
    try:
        proc.configure({"tok": "bench-secret"})
        proc.start([listener], [], run_as=(65534, 65534), audit=audit)
    finally:
        listener.close()
    return proc


def main() -> int:
    for tool in ("nginx", "hey", "curl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench_proxy: needs {tool}", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-proxy-"))
    tmp.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    handle = audited_handle = None
    store: Any = None
    store_dir: Path | None = None
    try:
        ca, cert, key = make_certs(tmp)
        port = free_port()
        procs.append(start_nginx(tmp, cert, key, port))
        policy = tmp / "bench.yaml"
        policy.write_text(f"""
name: bench
egress:
  - {{host: "{INSPECT_IP}", ports: [{port}], action: inspect, credential: tok, tls_ca: {ca}}}
  - {{host: "{DIRECT_IP}", ports: [{port}], action: direct}}
credentials:
  tok: {{secret: tok, header: Authorization, format: "Bearer {{secret}}"}}
""")
        listener = socket.create_server(("127.0.0.1", 0))
        corral = f"http://127.0.0.1:{listener.getsockname()[1]}"
        handle = start_corral(policy, listener, None)
        from corral.audit import AuditStore

        store_dir = Path(tempfile.mkdtemp(prefix="corral-bench-audit-", dir="/var/tmp"))
        store = AuditStore.open(store_dir / "audit.db")
        listener = socket.create_server(("127.0.0.1", 0))
        audited = f"http://127.0.0.1:{listener.getsockname()[1]}"
        audited_handle = start_corral(policy, listener, store.trail("bench"))
        mitm_port = free_port()
        mitm_proc = start_mitm(tmp, ca, mitm_port)
        if mitm_proc is not None:
            procs.append(mitm_proc)
        mitm = f"http://127.0.0.1:{mitm_port}" if mitm_proc else None

        url = f"https://{INSPECT_IP}:{port}/"
        results: dict[str, Any] = {"concurrency_rps": C_RPS, "duration": DURATION,
                                   "rounds": ROUNDS}
        configs = [("a_no_proxy", None), ("b_corral_inspect", corral),
                   ("b_corral_inspect_audited", audited), ("c_mitmproxy", mitm)]
        samples: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
        for _ in range(ROUNDS):  # interleave configs so background load hits all alike
            for name, proxy in configs:
                if name != "a_no_proxy" and proxy is None:
                    continue
                rps = hey(url, C_RPS, proxy)["rps"]
                lat = hey_latency(url, proxy)
                samples[name].append({"rps": rps, "p50_ms": lat["p50_ms"],
                                      "p99_ms": lat["p99_ms"],
                                      "p50_rounded_ms": lat["p50_rounded_ms"]})
        for name, runs in samples.items():
            results[name] = (
                {k: statistics.median(r[k] for r in runs)
                 for k in ("rps", "p50_ms", "p99_ms", "p50_rounded_ms")}
                if runs else None
            )
            results[f"{name}_samples"] = runs
        big = f"https://{DIRECT_IP}:{port}/big"
        none_speeds, direct_speeds = [], []
        for _ in range(2):
            none_speeds.append(curl_speed(big, ca, None))
            direct_speeds.append(curl_speed(big, ca, corral))
        results["d_bulk_no_proxy_MBps"] = max(none_speeds)
        results["d_bulk_corral_direct_MBps"] = max(direct_speeds)

        a, b, c = results["a_no_proxy"], results["b_corral_inspect"], results["c_mitmproxy"]
        ratios = {
            "b_over_c_rps": b["rps"] / c["rps"] if c else None,
            "b_added_p50_ms": b["p50_ms"] - a["p50_ms"],
            "b_added_p50_rounded_ms": b["p50_rounded_ms"] - a["p50_rounded_ms"],
            "b_audited_added_p50_ms": results["b_corral_inspect_audited"]["p50_ms"]
            - a["p50_ms"],
            # the audit's own cost (target <= 0.3 ms): the same proxy with and without its trail
            "b_audited_over_b_p50_ms": results["b_corral_inspect_audited"]["p50_ms"]
            - b["p50_ms"],
            "b_audited_over_c_rps": results["b_corral_inspect_audited"]["rps"] / c["rps"]
            if c else None,
            "b_over_a_rps": b["rps"] / a["rps"],
            "d_direct_over_none": results["d_bulk_corral_direct_MBps"]
            / results["d_bulk_no_proxy_MBps"],
        }
        results["ratios"] = ratios
        results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                              "load_average": os.getloadavg()}

        print(f"{'config':<26}{'req/s (c=' + str(C_RPS) + ')':>16}{'p50 ms (c=1)':>14}"
              f"{'p99 ms (c=1)':>14}")
        for name, _ in configs:
            row = results[name]
            if row is None:
                print(f"{name:<26}{'unavailable':>16}")
                continue
            print(f"{name:<26}{row['rps']:>16.0f}{row['p50_ms']:>14.3f}{row['p99_ms']:>14.2f}")
        print(f"1 GiB over TLS: no proxy {results['d_bulk_no_proxy_MBps']:.0f} MB/s, "
              f"corral direct {results['d_bulk_corral_direct_MBps']:.0f} MB/s")
        for key_, value in ratios.items():
            print(f"{key_:<26}{'n/a' if value is None else f'{value:.3f}'}")
        print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
        out = ROOT / "results" / "proxy.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    finally:
        if handle is not None:
            handle.stop()
        if audited_handle is not None:
            audited_handle.stop()
        if store is not None:
            store.close()
        if store_dir is not None:
            shutil.rmtree(store_dir, ignore_errors=True)
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
