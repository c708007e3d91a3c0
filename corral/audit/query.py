"""Reading the audit store: listing (tolerant of a damaged file), chain info, head, pruning.

``iter_events`` reads in id ranges; when SQLite reports a damaged page it falls back to reading
the rows of that range one by one and skips those it cannot read, so ``corral audit list`` still
shows what survives (``verify`` is what reports the damage).

Pruning removes whole *closed* chains whose close is older than the cutoff and keeps their
``chains`` row (closing hash, count) and their ledger entries, so the ledger still verifies.
"""

# No ``from __future__ import annotations`` here: a NamedTuple compiles each string annotation
# into a ForwardRef when its class is made, ~0.1 ms a field on every corral run.

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from corral.audit.store import connect, default_path
from corral.errors import CorralError, UserInputError

__all__ = [
    "Event",
    "ReadStats",
    "head",
    "iter_events",
    "last_events",
    "open_read",
    "parse_time",
    "prune",
]

_CHUNK = 2000


class Event(NamedTuple):
    id: int
    sandbox: str
    seq: int
    ts_us: int
    type: str
    actor: dict[str, Any]
    data: dict[str, Any]
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sandbox": self.sandbox,
            "seq": self.seq,
            "ts": datetime.fromtimestamp(self.ts_us / 1e6, UTC).isoformat(),
            "ts_us": self.ts_us,
            "type": self.type,
            "actor": self.actor,
            "data": self.data,
            "hash": self.hash,
        }


class ReadStats:
    """What a listing could not read (mutable: the reader counts into it)."""

    def __init__(self, skipped: int = 0) -> None:
        self.skipped = skipped  # rows that could not be read (damaged pages)


def open_read(path: str | Path | None = None) -> sqlite3.Connection:
    """Open the store for reading; ``CorralError`` if there is none."""
    p = Path(path) if path is not None else default_path()
    denied = p.parent.is_dir() and not os.access(p.parent, os.X_OK)
    if denied or (p.exists() and not os.access(p, os.R_OK)):
        raise CorralError(f"the audit store {p} is readable by root only (try sudo)")
    if not p.exists():
        raise CorralError(f"no audit store at {p} (nothing has been audited yet; CORRAL_HOME?)")
    try:
        con = connect(p, readonly=True)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.Error as err:
        raise CorralError(f"cannot open the audit store {p}: {err}") from None


_REL = re.compile(r"(\d+)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, *, what: str = "--since") -> int:
    """``1h`` / ``30m`` / ``7d`` (ago) or an ISO date/time (UTC if no zone) -> epoch µs."""
    text = text.strip()
    m = _REL.fullmatch(text)
    if m:
        ago = int(m.group(1)) * _UNIT[m.group(2)]
        if ago > time.time():  # before 1970: beyond any trail, and past SQLite's integers
            raise UserInputError(f"{what} {text!r}: goes back before 1970; use a smaller duration")
        return int((time.time() - ago) * 1e6)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise UserInputError(
            f"{what} {text!r}: use a duration like 1h, 30m, 7d or an ISO date "
            "like 2026-01-31 or 2026-01-31T12:00:00"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e6)


def _where(
    sandbox: str | None, since_us: int | None, types: list[str] | None
) -> tuple[str, list[Any]]:
    sql: list[str] = []
    args: list[Any] = []
    if sandbox:
        sql.append("sandbox = ?")
        args.append(sandbox)
    if since_us is not None:
        sql.append("ts_us >= ?")
        args.append(since_us)
    if types:
        clauses = []
        for t in types:
            if t.endswith(".*") or t.endswith("."):  # "proxy.*" selects a family
                clauses.append("type LIKE ?")
                args.append(t.rstrip("*").rstrip(".") + ".%")
            else:
                clauses.append("type = ?")
                args.append(t)
        sql.append("(" + " OR ".join(clauses) + ")")
    return (" AND ".join(sql) or "1"), args


def _event(r: tuple[Any, ...]) -> Event:
    return Event(r[0], r[1], r[2], r[3], r[4], _loads(r[5]), _loads(r[6]), r[7])


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return {"_unreadable": str(text)[:200]}
    return value if isinstance(value, dict) else {"_value": value}


def iter_events(
    con: sqlite3.Connection,
    *,
    sandbox: str | None = None,
    since_us: int | None = None,
    types: list[str] | None = None,
    after_id: int = 0,
    stats: ReadStats | None = None,
) -> Iterator[Event]:
    """Events in insertion order matching the filters, skipping rows a damaged file hides."""
    where, args = _where(sandbox, since_us, types)
    cols = "id, sandbox, seq, ts_us, type, actor, data, hash"
    cursor = after_id
    while True:
        try:
            rows = con.execute(
                f"SELECT {cols} FROM events WHERE id > ? AND {where} ORDER BY id LIMIT {_CHUNK}",
                [cursor, *args],
            ).fetchall()
        except sqlite3.DatabaseError:
            salvaged = _salvage(con, cols, where, args, cursor, stats)
            if salvaged is None:
                return
            rows = salvaged
        if not rows:
            return
        for r in rows:
            yield _event(r)
        cursor = rows[-1][0]


def last_events(
    con: sqlite3.Connection,
    limit: int,
    *,
    sandbox: str | None = None,
    since_us: int | None = None,
    types: list[str] | None = None,
    stats: ReadStats | None = None,
) -> list[Event]:
    """The last ``limit`` matching events (all if ``limit`` <= 0), oldest first, without reading
    the whole table when the file is healthy."""
    after = 0
    if limit > 0:
        where, args = _where(sandbox, since_us, types)
        try:
            row = con.execute(
                f"SELECT id FROM events WHERE {where} ORDER BY id DESC LIMIT 1 OFFSET ?",
                [*args, limit],
            ).fetchone()
            after = row[0] if row else 0
        except sqlite3.DatabaseError:
            after = 0  # damaged: read forward, salvaging, and keep the tail
    events = list(
        iter_events(
            con, sandbox=sandbox, since_us=since_us, types=types, after_id=after, stats=stats
        )
    )
    return events[-limit:] if limit > 0 else events


def _salvage(
    con: sqlite3.Connection,
    cols: str,
    where: str,
    args: list[Any],
    cursor: int,
    stats: ReadStats | None,
) -> list[tuple[Any, ...]] | None:
    """Read ids after ``cursor`` one at a time until a chunk's worth is found or ids run out."""
    try:
        top = con.execute("SELECT max(id) FROM events").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = cursor + 100_000
    out: list[tuple[Any, ...]] = []
    i = cursor
    while i < top and len(out) < _CHUNK:
        i += 1
        try:
            r = con.execute(
                f"SELECT {cols} FROM events WHERE id = ? AND {where}", [i, *args]
            ).fetchone()
        except sqlite3.DatabaseError:
            if stats is not None:
                stats.skipped += 1
            continue
        if r is not None:
            out.append(r)
    return out or None


def head(con: sqlite3.Connection) -> tuple[int, str]:
    """The ledger head: (entry count, hash). ``(0, GENESIS)`` when no chain has closed yet."""
    from corral.audit.events import GENESIS

    r = con.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    return (r[0], r[1]) if r else (0, GENESIS)


def prune(path: str | Path | None, before_us: int) -> tuple[int, int]:
    """Delete the events of chains closed before ``before_us``; returns (chains, events)."""
    p = Path(path) if path is not None else default_path()
    if not p.exists():
        raise CorralError(f"no audit store at {p}")
    try:
        con = connect(p)
    except sqlite3.Error as err:
        raise CorralError(f"cannot open the audit store {p} for writing: {err}") from None
    try:
        con.execute("BEGIN IMMEDIATE")
        chains = [
            r[0]
            for r in con.execute(
                "SELECT sandbox FROM chains WHERE closed_us IS NOT NULL AND closed_us < ? "
                "AND pruned = 0",
                (before_us,),
            )
        ]
        events = 0
        for sb in chains:
            events += con.execute("DELETE FROM events WHERE sandbox = ?", (sb,)).rowcount
            con.execute("UPDATE chains SET pruned = 1 WHERE sandbox = ?", (sb,))
        con.execute("COMMIT")
        return len(chains), events
    finally:
        con.close()
