"""Mode 1 round-trip: ``exec true`` through the MCP SDK's client over stdio (needs root).

The server is the real ``corral mcp`` (one sandbox, resident executor, allowlist checker on the
path: the policy allows ``true`` through ``exec.mode: allowlist``); the baseline is running
``true`` directly from this process (fork + exec + wait), measured in the same run, interleaved
so machine load affects both alike. Target: under 15 ms added at the median.

Run: .venv/bin/python bench/bench_mcp.py [--calls N]   (writes bench/results/mcp.json)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

RESULTS = Path(__file__).with_name("results") / "mcp.json"
CORRAL = str(Path(sys.executable).parent / "corral")


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": statistics.median(xs) * 1e3, "p95_ms": xs[int(len(xs) * 0.95)] * 1e3,
            "min_ms": xs[0] * 1e3}


async def measure(calls: int, tmp: Path) -> dict[str, object]:
    policy = tmp / "bench.yaml"
    policy.write_text('name: bench\nexec:\n  mode: allowlist\n  allow: ["true"]\n')
    ws = tmp / "ws"
    ws.mkdir()
    env = {**os.environ, "CORRAL_HOME": str(tmp / "state"), "CORRAL_CONFIG": str(tmp / "cfg")}
    params = StdioServerParameters(command=CORRAL, env=env,
                                   args=["mcp", "-p", str(policy), "--workspace", str(ws)])
    mcp: list[float] = []
    direct: list[float] = []
    t0 = time.perf_counter()
    async with Client(params, mode="legacy") as client:
        connected = time.perf_counter() - t0
        t1 = time.perf_counter()
        first = await client.call_tool("exec", {"command": "true"})  # provisions the sandbox
        first_call = time.perf_counter() - t1
        assert not first.is_error, first.content
        for _ in range(10):  # warm-up
            await client.call_tool("exec", {"command": "true"})
        for _ in range(calls):
            t = time.perf_counter()
            res = await client.call_tool("exec", {"command": "true"})
            mcp.append(time.perf_counter() - t)
            assert not res.is_error and (res.structured_content or {}).get("exit_code") == 0
            t = time.perf_counter()
            subprocess.run(["true"], check=True)
            direct.append(time.perf_counter() - t)
    m, d = stats(mcp), stats(direct)
    return {
        "calls": calls,
        "connect_ms": connected * 1e3,
        "first_call_ms": first_call * 1e3,
        "mcp_exec_true": m,
        "direct_true": d,
        "added_median_ms": m["median_ms"] - d["median_ms"],
        "ratio_median": m["median_ms"] / d["median_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_mcp needs root (corral mcp builds sandboxes)")
    with tempfile.TemporaryDirectory(prefix="corral-bench-mcp-") as tmp:
        result = anyio.run(measure, args.calls, Path(tmp))
    m, d = result["mcp_exec_true"], result["direct_true"]
    assert isinstance(m, dict) and isinstance(d, dict)
    print(f"MCP stdio round-trip of exec true, {result['calls']} calls (median / p95 / min)")
    print(f"{'path':<44} {'median ms':>10} {'p95 ms':>8} {'min ms':>8}")
    print(f"{'true run directly (baseline)':<44} {d['median_ms']:>10.2f} {d['p95_ms']:>8.2f} "
          f"{d['min_ms']:>8.2f}")
    print(f"{'exec true via corral mcp (SDK client, stdio)':<44} {m['median_ms']:>10.2f} "
          f"{m['p95_ms']:>8.2f} {m['min_ms']:>8.2f}")
    print(f"added at the median: {result['added_median_ms']:.2f} ms (target < 15 ms); "
          f"ratio {result['ratio_median']:.1f}x")
    print(f"server start + connect: {result['connect_ms']:.0f} ms; first call (provisions the "
          f"sandbox): {result['first_call_ms']:.0f} ms")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({**result, "machine": platform.node(),
                                   "load": os.getloadavg()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
