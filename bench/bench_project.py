"""What ``--project`` adds to ``corral run -- true``: start-to-exit against a loopback server.

Starts a real ``corral server`` (embedded SQLite in a temp ``CORRAL_HOME``) on 127.0.0.1, makes
an owner token, a team, a project and its policy (one inspect rule, a deny rule and a limit),
and a local copy of the same policy. Then times, interleaved round by round so load hits both
alike, ``corral run -p local.yaml -- true`` and ``corral run --project bench -- true`` (the same
policy pulled from the server, the run registered, shipped and ended there). 30 rounds after 3
warm-up rounds; median and p95 wall time in ms, median CPU (user+sys of the process tree), the
ratio of the medians, and the added milliseconds as the median of the per-round differences
(wall and CPU; target: < 30 ms added). Prints a table and
writes bench/results/project.json. Needs root. Usage:
``.venv/bin/python bench/bench_project.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "project.json"
CORRAL = str(ROOT / ".venv" / "bin" / "corral")
TARGET_MS = 30.0

POLICY = """name: bench
egress:
  - host: api.anthropic.com
    action: inspect
  - host: example.com
    action: deny
    reason: not this one
limits: {memory: 2GiB, pids: 512}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _corral(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([CORRAL, *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"corral {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


def serve(tmp: Path) -> tuple[str, subprocess.Popen[bytes], dict[str, str]]:
    """A corral server on loopback; (URL, process, the launcher's env)."""
    srv_home = tmp / "srv"
    srv_env = {**os.environ, "CORRAL_HOME": str(srv_home)}
    srv_env.pop("CORRAL_DB_URL", None)
    _corral(srv_env, "server", "migrate")
    port = _free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (lives as long as the server)
    proc = subprocess.Popen([CORRAL, "server", "--listen", f"127.0.0.1:{port}"], env=srv_env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit((tmp / "server.log").read_text())
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("corral server did not start") from None
            time.sleep(0.05)
    token = _corral(srv_env, "server", "token", "create", "--name", "bench",
                    "--role", "owner").strip()
    config = tmp / "config"
    config.mkdir()
    env = {**os.environ, "CORRAL_HOME": str(tmp / "home"), "CORRAL_CONFIG": str(config),
           "CORRAL_SERVER": url, "CORRAL_TOKEN": token}
    return url, proc, env


def setup(env: dict[str, str], tmp: Path) -> Path:
    _corral(env, "team", "create", "bench")
    _corral(env, "project", "create", "bench", "--team", "bench")
    policy = tmp / "bench.yaml"
    policy.write_text(POLICY)
    _corral(env, "policy", "push", str(policy), "--project", "bench")
    return policy


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms of the process tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_project needs root (corral run)")
    with tempfile.TemporaryDirectory(prefix="corral-bench-project-") as name:
        tmp = Path(name)
        _url, proc, env = serve(tmp)
        try:
            policy = setup(env, tmp)
            variants = {"corral run -p bench.yaml -- true": [CORRAL, "run", "-p", str(policy),
                                                            "--", "true"],
                        "corral run --project bench -- true": [CORRAL, "run", "--project",
                                                               "bench", "--", "true"]}
            walls: dict[str, list[float]] = {k: [] for k in variants}
            cpus: dict[str, list[float]] = {k: [] for k in variants}
            for i in range(3 + args.rounds):
                for label, argv in variants.items():
                    wall, cpu = time_once(argv, env)
                    if i >= 3:
                        walls[label].append(wall)
                        cpus[label].append(cpu)
        finally:
            proc.terminate()
            proc.wait(20)
    rows = {k: {"median_ms": statistics.median(v), "p95_ms": p95(v),
                "cpu_median_ms": statistics.median(cpus[k])} for k, v in walls.items()}
    local, project = (rows[k] for k in variants)
    lw, pw = (walls[k] for k in variants)
    lc, pc = (cpus[k] for k in variants)
    # Paired by round (the two variants run back to back), the difference is far less
    # sensitive to load that drifts over the benchmark than a difference of medians.
    added = statistics.median(b - a for a, b in zip(lw, pw, strict=True))
    summary = {"added_ms": added, "ratio": project["median_ms"] / local["median_ms"],
               "added_cpu_ms": statistics.median(b - a for a, b in zip(lc, pc, strict=True)),
               "target_added_ms": TARGET_MS, "met": added < TARGET_MS,
               "loadavg_1m_at_end": os.getloadavg()[0]}
    print(f"{'variant':44} {'median':>9} {'p95':>9} {'cpu':>9}")
    for label, row in rows.items():
        print(f"{label:44} {row['median_ms']:8.1f}  {row['p95_ms']:8.1f}  "
              f"{row['cpu_median_ms']:8.1f}")
    print(f"--project adds {added:.1f} ms (median of per-round differences; ratio of medians "
          f"{summary['ratio']:.2f}; CPU {summary['added_cpu_ms']:+.1f} ms); target < "
          f"{TARGET_MS:.0f} ms: {'met' if summary['met'] else 'NOT met'} (load average "
          f"{summary['loadavg_1m_at_end']:.1f} on {os.cpu_count()} CPUs)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": args.rounds, "rows": rows, "summary": summary,
                                   "machine": platform.node(), "python": sys.version.split()[0]},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
