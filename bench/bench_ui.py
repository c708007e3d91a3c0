"""Web UI server time with real volumes: the sandboxes list and the first page of a
10,000-event run's timeline, with 1,000 runs and 1,000,000 audit events in the database, on
SQLite and on PostgreSQL (a cluster started here as bench_ingest starts it).

Rows are made with bulk inserts (executemany in 20,000-row chunks; COPY on PostgreSQL), then
``ANALYZE``. The app is the real one (``create_app``) called in process through its ASGI
interface with a real web-session cookie, so the figure is the server's time for the whole
request (session, authorization, queries, template) without a network in between. Target:
p95 < 150 ms. Prints a table and writes bench/results/ui.json.

Usage: ``.venv/bin/python bench/bench_ui.py [--events 1000000] [--runs 1000] [--repeat 60]
[--backend sqlite|postgresql]`` (as root, for PostgreSQL).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ingest import start_postgres

RESULTS = Path(__file__).with_name("results") / "ui.json"
TARGET_MS = 150.0
BIG = 10_000
CHUNK = 20_000


def _populate(db_url: str, runs: int, events: int) -> tuple[str, str]:
    """Teams, a user with a live session, ``runs`` runs and ``events`` events (``BIG`` of
    them in one run). Returns (session id, the big run's id)."""
    from sqlalchemy import insert, text

    from corral.server.db import Database
    from corral.server.migrate import upgrade
    from corral.server.models import (
        Agent,
        AuditEvent,
        Membership,
        Project,
        Run,
        Team,
        User,
        WebSession,
        utcnow,
    )

    db = Database(db_url)
    upgrade(db.engine)
    now = utcnow()
    sid = "bench-session-" + uuid.uuid4().hex
    with db.session() as s:
        team = Team(name="web")
        s.add(team)
        s.flush()
        user = User(email="alice@example.com", name="Alice")
        s.add(user)
        s.flush()
        s.add(Membership(team_id=team.id, user_id=user.id, role="admin"))
        projects = [Project(name=f"p{i}", team_id=team.id) for i in range(10)]
        s.add_all(projects)
        s.flush()
        agents = [Agent(project_id=p.id, name="claude-code") for p in projects]
        s.add_all(agents)
        s.add(WebSession(id_hash=hashlib.sha256(sid.encode()).hexdigest(), csrf_hash="x",
                         user_id=user.id, created_at=now, last_seen_at=now,
                         expires_at=now + dt.timedelta(hours=12),
                         step_up_until=now + dt.timedelta(minutes=10)))
        s.flush()
        run_rows = []
        for i in range(runs):
            p = projects[i % len(projects)]
            started = now - dt.timedelta(minutes=runs - i)
            run_rows.append({"id": str(uuid.uuid4()), "project_id": p.id,
                             "agent_id": agents[i % len(agents)].id,
                             "human": f"dev{i % 25}@example.com", "host": f"host-{i % 40}",
                             "sandbox": f"sb-{i}", "policy_digest": "ab" * 32,
                             "status": "running" if i >= runs - 20 else "ended",
                             "command": ["claude", "-p", f"task {i}"], "started_at": started,
                             "last_heartbeat_at": now, "events": 0, "head": "0" * 64})
        s.execute(insert(Run), run_rows)
        s.commit()
    big = run_rows[-1]
    counts = {r["id"]: 0 for r in run_rows}
    per_small = (events - BIG) // (runs - 1)
    plan = [(big, BIG)] + [(r, per_small) for r in run_rows[:-1]]
    types = ["proxy.allow", "proxy.deny", "exec.start", "dns.query", "credential.inject"]
    base_us = int(now.timestamp() * 1e6) - events * 1000
    buf: list[dict[str, Any]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        with db.engine.begin() as conn:
            conn.execute(insert(AuditEvent), buf)
        written += len(buf)
        buf.clear()

    for run, n in plan:
        pid = run["project_id"]
        for seq in range(1, n + 1):
            t = types[seq % len(types)]
            data = json.dumps({"host": f"h{seq % 97}.example.com", "method": "GET",
                               "path": f"/v1/items/{seq}", "rule": "p.yaml:4"},
                              sort_keys=True, separators=(",", ":"))
            buf.append({"run_id": run["id"], "project_id": pid, "seq": seq,
                        "ts_us": base_us + written + len(buf), "type": t,
                        "actor": '{"identity":"alice@example.com","uid":0,"user":"root"}',
                        "data": data, "v": 1, "prev": "0" * 64, "hash": "1" * 64})
            if len(buf) >= CHUNK:
                flush()
        counts[run["id"]] = n
    if buf:
        flush()
    with db.engine.begin() as conn:
        for rid, n in counts.items():
            conn.execute(text("UPDATE runs SET events = :n WHERE id = :id"), {"n": n, "id": rid})
        conn.execute(text("ANALYZE"))
    db.dispose()
    print(f"  {written} events in {runs} runs", flush=True)
    return sid, big["id"]


def _measure(db_url: str, sid: str, big: str, repeat: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from corral.server.app import create_app
    from corral.server.config import ServerConfig
    from corral.server.crypto import generate_key_file

    kek = Path(tempfile.mkdtemp(prefix="corral-ui-kek-")) / "kek"
    generate_key_file(kek)
    app = create_app(ServerConfig(db=db_url, kek_file=kek))
    out: dict[str, Any] = {}
    with TestClient(app) as client:
        client.cookies.set("corral_session", sid)
        for name, path in [("sandboxes list", "/sandboxes"),
                           ("sandboxes, status=running", "/sandboxes?status=running"),
                           ("run timeline, first page", f"/sandboxes/{big}"),
                           ("overview", "/")]:
            for _ in range(3):  # warm: templates compiled, statements cached
                assert client.get(path).status_code == 200
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                resp = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                assert resp.status_code == 200, resp.text[:200]
            times.sort()
            out[name] = {"p50_ms": round(statistics.median(times), 1),
                         "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                         "bytes": len(resp.content)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    rows = []
    for backend in args.backend or ["sqlite", "postgresql"]:
        tmp = Path(tempfile.mkdtemp(prefix="corral-bench-ui-"))
        stop = None
        if backend == "sqlite":
            url = f"sqlite:///{tmp / 'ui.db'}"
        else:
            url, stop = start_postgres(tmp)
        try:
            print(f"{backend}: populating", flush=True)
            t0 = time.perf_counter()
            sid, big = _populate(url, args.runs, args.events)
            print(f"  populated in {time.perf_counter() - t0:.0f} s", flush=True)
            for page, figures in _measure(url, sid, big, args.repeat).items():
                rows.append({"backend": backend, "page": page, **figures,
                             "target_p95_ms": TARGET_MS, "runs": args.runs,
                             "events": args.events})
        finally:
            if stop is not None:
                stop()
    print(f"{'backend':<11} {'page':<28} {'p50 ms':>7} {'p95 ms':>7} {'target':>7}")
    for r in rows:
        print(f"{r['backend']:<11} {r['page']:<28} {r['p50_ms']:>7} {r['p95_ms']:>7} "
              f"{r['target_p95_ms']:>7}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(),
                                   "python": platform.python_version(), "rows": rows},
                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
