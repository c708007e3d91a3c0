"""``corral run`` startup: start-to-exit time of ``corral run -- true``.

Measured side by side in one run, interleaved round by round so load changes hit every
variant alike: plain ``true`` (process spawn), bare ``bwrap ... true`` (the same namespaces and
read-only system binds, no corral), ``corral run -- true`` with no policy, and with a policy
file with egress rules and limits (resolved through the compiled-policy cache), which brings
the egress proxy, its ephemeral CA and the DNS stub: once with the proxy child forked by the
pre-started helper (``corral.runtime.zygote``, warmed before the rounds) and once forked by the
launcher itself (``CORRAL_PROXY_ZYGOTE=0``, which imports the proxy per run). 50 rounds after 3
warm-up rounds; median and p95 in milliseconds, the ratio of each median to bare bwrap, and
the median CPU time (user+sys of the process tree), which load from other work on the machine
inflates far less than wall time; then the zygote/local ratios of the two proxy variants.
Zygotes the benchmark started are stopped at the end.
Prints a table and writes bench/results/run.json. Needs root. Usage:
``.venv/bin/python bench/bench_run.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corral.runtime import zygote

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "run.json"
ZYGOTE = "corral run -p bench.yaml -- true (proxy, zygote)"
LOCAL = "corral run -p bench.yaml -- true (proxy, CORRAL_PROXY_ZYGOTE=0)"
CORRAL = str(ROOT / ".venv" / "bin" / "corral")

BWRAP = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
         "--unshare-net", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink",
         "usr/sbin", "/sbin", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
         "--tmpfs", "/tmp", "--", "true"]

POLICY = """name: bench
egress:
  - host: api.anthropic.com
    action: inspect
  - host: "*.githubusercontent.com"
    action: direct
limits: {memory: 2GiB, pids: 512, idle: 10m}
"""


def warm_zygote(argv: list[str], env: dict[str, str]) -> None:
    """One run starts the helper (no zygote yet: that run forks locally); wait till it listens."""
    time_once(argv, env)
    path = zygote.socket_path()
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.exists(path):
        raise SystemExit("the proxy zygote did not start")


def zygote_children_cpu_ms() -> dict[int, float]:
    """CPU of the children each of this checkout's zygotes has reaped (user+sys, ms): the
    zygote variant's proxy children are not ours, so not in our RUSAGE_CHILDREN."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in zygote.running():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if zygote.package_dir().encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[13]) + int(fields[14])) * 1000 / tick  # cutime, cstime
    return out


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall ms start to exit, and CPU ms (user+sys of the whole process tree, which other load
    on the machine does not inflate the way it inflates wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    elapsed = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return elapsed, cpu


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_run needs root", file=sys.stderr)
        return 1
    compileall.compile_dir(ROOT / "corral", quiet=1)  # as an installed package would have
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        env["CORRAL_HOME"] = f"{tmp}/state"
        env["CORRAL_CONFIG"] = f"{tmp}/config"
        tag = f"bench-{os.getpid()}"  # the zygotes this benchmark's runs start carry it
        env["CORRAL_ZYGOTE_TAG"] = tag
        policy = Path(tmp) / "bench.yaml"
        policy.write_text(POLICY)
        with_policy = [CORRAL, "run", "-p", str(policy), "--", "true"]
        local_env = {**env, "CORRAL_PROXY_ZYGOTE": "0"}
        variants = {
            "true (plain spawn)": (["true"], env),
            "bwrap ... true (bare)": (BWRAP, env),
            "corral run -- true": ([CORRAL, "run", "--", "true"], env),
            ZYGOTE: (with_policy, env),
            LOCAL: (with_policy, local_env),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        try:
            warm_zygote(with_policy, env)
            zygote_cpu = zygote_children_cpu_ms()
            for i in range(args.rounds + 3):
                for name, (argv, venv) in variants.items():
                    ms, cpu_ms = time_once(argv, venv)
                    if i >= 3:
                        samples[name].append(ms)
                        cpu[name].append(cpu_ms)
            time.sleep(0.2)  # the last child reaped
            after = zygote_children_cpu_ms()
            restarted = set(after) != set(zygote_cpu)
            child_cpu = sum(after[p] - zygote_cpu[p] for p in after if p in zygote_cpu)
            child_cpu /= args.rounds + 3
        finally:
            for pid in zygote.running(tag):
                zygote.stop(pid)
    base = statistics.median(samples["bwrap ... true (bare)"])
    rows = []
    print(f"{'variant':<58} {'median ms':>10} {'p95 ms':>9} {'vs bwrap':>9} {'CPU ms':>7}")
    for name, values in samples.items():
        med = statistics.median(values)
        cpu_med = statistics.median(cpu[name])
        rows.append({"variant": name, "median_ms": round(med, 2), "p95_ms": round(p95(values), 2),
                     "ratio_to_bwrap": round(med / base, 2), "cpu_median_ms": round(cpu_med, 2)})
        print(f"{name:<58} {med:>10.1f} {p95(values):>9.1f} {med / base:>8.1f}x {cpu_med:>7.1f}")
    ratios = {
        "median": statistics.median(samples[ZYGOTE]) / statistics.median(samples[LOCAL]),
        "p95": p95(samples[ZYGOTE]) / p95(samples[LOCAL]),
        "cpu_median": statistics.median(cpu[ZYGOTE]) / statistics.median(cpu[LOCAL]),
    }
    note = " (the zygote restarted during the run: partial)" if restarted else ""
    print(f"zygote's proxy children: {child_cpu:.1f} ms CPU per run on average, not in the CPU "
          f"column above{note}")
    print("proxy child from the zygote vs forked by the launcher: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "run",
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_1m": os.getloadavg()[0]},
        "results": rows,
        "zygote_vs_local": {k: round(v, 3) for k, v in ratios.items()},
        "zygote_child_cpu_ms_per_run": round(child_cpu, 2),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
