"""Issue 11: what the audit adds to an injected request, bare and audited proxies alternated.

``bench_proxy.py``'s (b) and (b+) configs alone: one nginx, two corral proxies started as
``corral run`` starts them (the second with a real audit store on ``/var/tmp`` served through
the relay, every ``credential.inject`` durable before the request leaves), ``hey -c 1`` for
``BENCH_AUDITED_DURATION`` (3s) on each in turn, the order swapped every round, ``ROUNDS``
(``BENCH_AUDITED_ROUNDS``, 6) rounds. The figure is the median of the per-round differences
(audited p50 minus bare p50, hey's grouped percentile), so the machine's load falls on both
sides of each difference alike. Target: <= 0.3 ms.

The proxy child is forked by this process (``CORRAL_PROXY_ZYGOTE=0``), so the code measured
is the one on ``sys.path``: ``PYTHONPATH=<other checkout> .venv/bin/python
bench/bench_audited.py`` measures another tree in the same conditions (alternate the two).
Needs root (the proxy's uid drop), nginx and hey.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["CORRAL_PROXY_ZYGOTE"] = "0"

import bench_proxy as bp

import corral
from corral.audit import AuditStore

ROUNDS = int(os.environ.get("BENCH_AUDITED_ROUNDS", "6"))
bp.DURATION = os.environ.get("BENCH_AUDITED_DURATION", "3s")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-audited-"))
    tmp.chmod(0o755)
    store_dir = Path(tempfile.mkdtemp(prefix="corral-bench-audit-", dir="/var/tmp"))
    ca, cert, key = bp.make_certs(tmp)
    port = bp.free_port()
    nginx = bp.start_nginx(tmp, cert, key, port)
    handles = []
    store = None
    try:
        policy = tmp / "bench.yaml"
        policy.write_text(f"""
name: bench
egress:
  - {{host: "{bp.INSPECT_IP}", ports: [{port}], action: inspect, credential: tok, tls_ca: {ca}}}
credentials:
  tok: {{secret: tok, header: Authorization, format: "Bearer {{secret}}"}}
""")
        store = AuditStore.open(store_dir / "audit.db")
        proxies = []
        for trail in (None, store.trail("bench")):
            listener = socket.create_server(("127.0.0.1", 0))
            proxies.append(f"http://127.0.0.1:{listener.getsockname()[1]}")
            handles.append(bp.start_corral(policy, listener, trail))
        url = f"https://{bp.INSPECT_IP}:{port}/"
        bare: list[float] = []
        audited: list[float] = []
        for r in range(ROUNDS):
            order = [(proxies[0], bare), (proxies[1], audited)]
            for proxy, out in order if r % 2 == 0 else order[::-1]:
                out.append(bp.hey_latency(url, proxy)["p50_ms"])
        diffs = [a - b for a, b in zip(audited, bare, strict=True)]
        print(f"tree {Path(corral.__file__).parent.parent}")
        print(f"bare p50 ms     {' '.join(f'{x:.3f}' for x in bare)}")
        print(f"audited p50 ms  {' '.join(f'{x:.3f}' for x in audited)}")
        print(f"audited over bare p50 ms: median {statistics.median(diffs):.3f} "
              f"(rounds {' '.join(f'{x:.3f}' for x in diffs)}; target <= 0.3)")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    finally:
        for handle in handles:
            handle.stop()
        if store is not None:
            store.close()
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(store_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
