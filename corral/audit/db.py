"""The SQLite layer of the audit store: schema, connections, row insertion, file modes.

Schema (version ``SCHEMA_VERSION``): ``events`` (one row per event; ``data`` and ``actor`` are
stored as the canonical JSON that is hashed), ``chains`` (one row per sandbox: its head — last
seq and hash — the launching actor, and once closed its status and ledger entry), ``ledger``
(the global chain of closing hashes) and ``meta``.

Indexes: ``events`` has its rowid (``id``, the readers' cursor and order) and ``(sandbox,
seq)`` (one chain's events) and nothing else, because every index is one more B-tree page
written per commit on the audited request's path. ``events_ts`` (on ``ts_us``) was dropped:
the readers order by ``id`` and SQLite answers their ``ts_us >=`` filters by scanning ids
(forward in ``iter_events``, backwards from the newest in ``last_events``), which it already
did with the index; ``AuditStore.open`` drops it from stores made before (``OBSOLETE``), the
schema version and the hashed form are unchanged.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from corral.audit.events import SCHEMA_VERSION, canonical_json

__all__ = [
    "OBSOLETE",
    "SCHEMA",
    "connect",
    "free_bytes",
    "insert_events",
    "ledger_body",
    "needs_schema",
    "tighten",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chains(
  sandbox TEXT PRIMARY KEY, actor TEXT NOT NULL, opened_us INTEGER NOT NULL,
  last_seq INTEGER NOT NULL, last_hash TEXT NOT NULL,
  closed_us INTEGER, status TEXT, ledger_seq INTEGER, pruned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY, sandbox TEXT NOT NULL, seq INTEGER NOT NULL,
  ts_us INTEGER NOT NULL, type TEXT NOT NULL, actor TEXT NOT NULL, data TEXT NOT NULL,
  prev TEXT NOT NULL, hash TEXT NOT NULL, v INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_sandbox_seq ON events(sandbox, seq);
CREATE TABLE IF NOT EXISTS ledger(
  seq INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, sandbox TEXT NOT NULL,
  count INTEGER NOT NULL, chain_hash TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
"""


# indexes of earlier stores that no reader uses (see above): dropped when a store is opened
OBSOLETE = "DROP INDEX IF EXISTS events_ts"


def ledger_body(seq: int, ts: int, sandbox: str, count: int, chain_hash: str, prev: str) -> str:
    return canonical_json(
        {
            "chain_hash": chain_hash,
            "count": count,
            "prev": prev,
            "sandbox": sandbox,
            "seq": seq,
            "ts": ts,
            "v": SCHEMA_VERSION,
        }
    )


_ROWS_PER_INSERT = 256
_INSERT_HEAD = "INSERT INTO events(sandbox, seq, ts_us, type, actor, data, prev, hash, v) VALUES"
_INSERT = (
    "INSERT INTO events(sandbox, seq, ts_us, type, actor, data, prev, hash, v) "
    "VALUES(?,?,?,?,?,?,?,?,?)"
)


def insert_events(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert with multi-row VALUES statements: one sqlite3_step (one release of the GIL) per
    chunk instead of per row, which matters when many emitting threads compete for the GIL."""
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i : i + _ROWS_PER_INSERT]
        sql = _INSERT_HEAD + ",".join(["(?,?,?,?,?,?,?,?,?)"] * len(chunk))
        con.execute(sql, [v for row in chunk for v in row])


def connect(
    path: Path, synchronous: str = "NORMAL", *, readonly: bool = False
) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
    )
    con.execute("PRAGMA busy_timeout=10000")
    if not readonly:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={synchronous}")
    return con


def needs_schema(con: sqlite3.Connection) -> bool:
    row = con.execute("SELECT count(*) FROM sqlite_master WHERE name='ledger'").fetchone()
    return bool(row[0] == 0)


def tighten(path: Path) -> None:
    for p in _files(path):
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)


def _files(path: Path) -> Iterable[Path]:
    return (path, Path(f"{path}-wal"), Path(f"{path}-shm"))


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
