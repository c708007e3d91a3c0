"""Central audit ingest: events per second that real ``corral server`` processes accept from 20
concurrent launchers shipping batches of up to 500 events, on SQLite and on PostgreSQL.

Each launcher is a process of its own using ``corral.client.ServerRun`` (one persistent
connection, its run's sandbox token) and ships a pre-built hash chain (built before the clock
starts); the server recomputes every hash and stores each batch in one transaction. The
PostgreSQL cluster is started here as the test suite starts it (``initdb`` as ``postgres`` in a
temp dir, unix socket, ``fsync=off`` like the suite; SQLite runs with the server's own
``synchronous=NORMAL``). Prints a table and writes bench/results/ingest.json.

SQLite is served by one process (the embedded server: processes sharing a SQLite file contend
for its one write lock through a sleeping busy handler); PostgreSQL by two replicas.

Usage: ``.venv/bin/python bench/bench_ingest.py [--clients 20] [--events 10000]
[--servers N] [--backend sqlite|postgresql]`` (as root, for PostgreSQL).
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.audit.events import GENESIS, canonical_json, event_body, event_hash

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "ingest.json"
CORRAL = str(ROOT / ".venv" / "bin" / "corral")
TARGET = 20_000
BATCH = 500


def chain(sandbox: str, n: int) -> list[dict[str, Any]]:
    """``n`` proxy decisions as the local store writes them (canonical JSON, chained)."""
    actor = canonical_json({"identity": "bench@example.com", "login_uid": 1000, "sudo_uid": 1000,
                            "sudo_user": "bench", "uid": 0, "user": "root"})
    prev, out = GENESIS, []
    for seq in range(1, n + 1):
        data = canonical_json({"bytes_in": 1834, "bytes_out": 52311, "duration_ms": 812.4,
                               "host": "api.anthropic.com", "method": "POST",
                               "mode": "inspect", "path": f"/v1/messages/{seq}",
                               "rule": "builtin:anthropic:4", "status": 200})
        ts = 1_760_000_000_000_000 + seq
        h = event_hash(event_body(actor=actor, data=data, prev=prev, sandbox=sandbox, seq=seq,
                                  ts=ts, type_="proxy.inspect", v=1))
        out.append({"seq": seq, "ts": ts, "type": "proxy.inspect", "actor": actor,
                    "data": data, "v": 1, "prev": prev, "hash": h})
        prev = h
    return out


def launcher(url: str, token: str, index: int, events: int, ready: Any, go: Any,
             done: Any) -> None:
    from corral.client import ServerRun

    sandbox = f"bench-{index}"
    trail = chain(sandbox, events)
    run = ServerRun.register(url, token, "bench", host=f"host-{index}", sandbox=sandbox,
                             policy_digest="ab" * 32, timeout=120)
    ready.put(index)
    go.wait()
    acked = 0
    for lo in range(0, events, BATCH):
        acked = run._ship(trail[lo:lo + BATCH])
    done.put((index, acked, time.perf_counter()))
    run.end(0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process: the server's cost per batch, which the load
    of other suites on a shared machine stretches far less than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> None:
    subprocess.run(cmd, user="postgres", group="postgres", check=True, capture_output=True)


def start_postgres(tmp: Path) -> tuple[str, Any]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or os.geteuid() != 0:
        raise SystemExit("PostgreSQL needs Debian's postgresql and root (scripts/sysdeps.sh)")
    bin_dir = Path(found[-1]).parent
    root = tmp / "pg"
    root.mkdir()
    tmp.chmod(0o711)  # postgres must reach its directory through ours
    (root / "sock").mkdir()
    shutil.chown(root, "postgres", "postgres")
    shutil.chown(root / "sock", "postgres", "postgres")
    _as_postgres([str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust",
                  "-U", "postgres", "--no-sync", "-E", "UTF8"])
    _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                  "-w", "-o", f"-k {root / 'sock'} -c listen_addresses='' -c fsync=off "
                  "-c max_connections=200", "start"])

    def stop() -> None:
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate",
                      "-w", "stop"])

    import psycopg

    with psycopg.connect(host=str(root / "sock"), user="postgres", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    return f"postgresql+psycopg://postgres@/bench?host={root / 'sock'}", stop


def serve(db_url: str, tmp: Path, servers: int) -> tuple[list[str], list[Any]]:
    from corral.server.crypto import generate_key_file
    from corral.server.db import Database
    from corral.server.migrate import upgrade

    db = Database(db_url)
    upgrade(db.engine)
    db.dispose()
    kek = tmp / "kek"
    if not kek.exists():
        generate_key_file(kek)
    config = tmp / "server.yaml"
    config.write_text(f"kek_file: {kek}\nmax_body: 8388608\n")
    env = {**os.environ, "CORRAL_DB_URL": db_url, "CORRAL_HOME": str(tmp / "home")}
    urls, procs = [], []
    for _ in range(servers):
        port = _free_port()
        procs.append(subprocess.Popen([CORRAL, "server", "--listen", f"127.0.0.1:{port}",
                                       "--config", str(config)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    import http.client

    for url in urls:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=1)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("corral server did not start") from None
                time.sleep(0.05)
    return urls, procs


def measure(backend: str, clients: int, events: int, servers: int) -> dict[str, Any]:
    from corral.client import Client
    from corral.server.db import Database
    from corral.server.local import create_token

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-ingest-", dir="/var/tmp"))
    stop = None
    procs: list[Any] = []
    try:
        if backend == "sqlite":
            db_url = f"sqlite:///{tmp / 'server.db'}"
        else:
            db_url, stop = start_postgres(tmp)
        urls, procs = serve(db_url, tmp, servers)
        import datetime as dt

        db = Database(db_url)
        token = create_token(db, name="bench", role="owner", team=None,
                             ttl=dt.timedelta(hours=1))
        db.dispose()
        with Client(urls[0], token) as c:
            c.post("/teams", {"name": "bench"})
            c.post("/teams/bench/projects", {"name": "bench"})
        ctx = mp.get_context("fork")
        ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        workers = [ctx.Process(target=launcher, args=(urls[i % len(urls)], token, i, events,
                                                      ready, go, done))
                   for i in range(clients)]
        for w in workers:
            w.start()
        for _ in workers:
            ready.get(timeout=300)
        cpu_before = sum(_cpu_s(p.pid) for p in procs)
        start = time.perf_counter()
        go.set()
        finished = [done.get(timeout=600) for _ in workers]
        elapsed = max(t for _, _, t in finished) - start
        server_cpu = sum(_cpu_s(p.pid) for p in procs) - cpu_before
        for w in workers:
            w.join(60)
        assert all(acked == events for _, acked, _ in finished), finished
        total = clients * events
        return {"backend": backend, "clients": clients, "events_per_client": events,
                "batch": BATCH, "servers": servers, "events": total,
                "seconds": round(elapsed, 3), "events_per_s": round(total / elapsed),
                "target": TARGET, "ratio_to_target": round(total / elapsed / TARGET, 2),
                "server_cpu_ms_per_batch": round(server_cpu * 1000 / (total / BATCH), 1)}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if stop is not None:
            stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--events", type=int, default=10_000, help="events per client")
    parser.add_argument("--servers", type=int, help="corral server processes (default: 1 on "
                        "SQLite, the embedded server; 2 replicas on PostgreSQL)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--repeat", type=int, default=2, help="runs per backend (best kept)")
    args = parser.parse_args()
    rows = []
    for backend in args.backend or ["sqlite", "postgresql"]:
        runs = []
        for _ in range(args.repeat):  # best of N: the machine is shared, load only slows
            load = os.getloadavg()[0]
            row = measure(backend, args.clients, args.events,
                          args.servers or (1 if backend == "sqlite" else 2))
            runs.append({**row, "load_1m_before": round(load, 2)})
        best = max(runs, key=lambda r: r["events_per_s"])
        rows.append({**best, "all_events_per_s": [r["events_per_s"] for r in runs]})
    print(f"{'backend':<11} {'clients':>7} {'events':>8} {'servers':>7} {'seconds':>8} "
          f"{'events/s':>9} {'vs target':>9} {'load':>5} {'server CPU/batch':>16}")
    for r in rows:
        print(f"{r['backend']:<11} {r['clients']:>7} {r['events']:>8} {r['servers']:>7} "
              f"{r['seconds']:>8} {r['events_per_s']:>9} {r['ratio_to_target']:>8}x "
              f"{r['load_1m_before']:>5} {r['server_cpu_ms_per_batch']:>13} ms")
    if len(rows) == 2:
        print(f"postgresql / sqlite: {rows[1]['events_per_s'] / rows[0]['events_per_s']:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(),
                                   "python": platform.python_version(), "runs": rows},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
