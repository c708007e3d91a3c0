"""Launch-path cost of the low-level isolation layers (needs root).

- shim: ``/bin/true`` exec'd bare, through a bare ``python3 -I -S`` (the interpreter's floor),
  and through the privilege-drop shim (uid/gid, caps, no_new_privs, Landlock, exec), with the
  shim shipped as bytecode (what corral does) and as source compiled at each launch. Runs are
  interleaved so machine load affects every variant alike. Target: shim <= 10 ms over bare.
- seccomp: compiling the filter with libseccomp vs loading it from the root-only disk cache.
- cgroups: create (memory, pids, cpu limits) + destroy of an empty group.

Run: .venv/bin/python bench/bench_shim.py [--runs N]   (writes bench/results/shim.json)
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
from collections.abc import Callable
from pathlib import Path

from corral.policy.types import Limits
from corral.sandbox import seccomp
from corral.sandbox.cgroups import Cgroup
from corral.sandbox.shim import PYTHON, ShimConfig, shim_argv, shim_source

RESULTS = Path(__file__).with_name("results") / "shim.json"


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": statistics.median(xs) * 1e3, "p95_ms": xs[int(len(xs) * 0.95)] * 1e3}


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall time and the child's CPU time (user + system; less sensitive to machine load)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_shim needs root")
    work = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    work.chmod(0o1777)
    cfg = ShimConfig(uid=64200, gid=64200, writable=(str(work),))
    shim = shim_argv(cfg)
    from_source = [PYTHON, "-I", "-S", "-c", shim_source(), cfg.to_json()]
    variants = {
        "true (bare exec)": ["/bin/true"],
        "python3 -I -S (floor)": [PYTHON, "-I", "-S", "-c", "pass"],
        "shim -> true (bytecode)": [*shim, "/bin/true"],
        "shim -> true (source)": [*from_source, "/bin/true"],
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.runs):
        for name, argv in variants.items():
            wall, used = run_child(argv)
            samples[name].append(wall)
            cpu[name].append(used)
    results: dict[str, dict[str, float]] = {k: stats(v) for k, v in samples.items()}
    for k, v in cpu.items():
        results[k]["cpu_median_ms"] = statistics.median(v) * 1e3

    compile_s = [timed(seccomp.compile_filter) for _ in range(20)]
    results["seccomp compile (libseccomp)"] = stats(compile_s)
    os.environ["CORRAL_HOME"] = str(work / "state")
    seccomp.build_filter()  # fill the disk cache
    cached = []
    for _ in range(20):
        seccomp.build_filter.cache_clear()
        cached.append(timed(seccomp.build_filter))
    results["seccomp build_filter (disk cache)"] = stats(cached)

    cg_times = []
    for i in range(20):
        def cycle(i: int = i) -> None:
            Cgroup.create(f"bench-{os.getpid()}-{i}", Limits(memory=2**30, pids=512, cpu=1.0)
                          ).destroy()
        cg_times.append(timed(cycle))
    results["cgroup create+destroy"] = stats(cg_times)
    subprocess.run(["rm", "-rf", str(work)], check=True)

    bare = results["true (bare exec)"]["median_ms"]
    print(f"{'case':40} {'median ms':>10} {'p95 ms':>8} {'vs bare':>8} {'cpu ms':>7}")
    for name, r in results.items():
        ratio = f"+{r['median_ms'] - bare:.1f}" if name.startswith(("shim", "python")) else ""
        cpu_ms = f"{r['cpu_median_ms']:.2f}" if "cpu_median_ms" in r else ""
        print(f"{name:40} {r['median_ms']:10.2f} {r['p95_ms']:8.2f} {ratio:>8} {cpu_ms:>7}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.node(), "runs": args.runs,
                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
