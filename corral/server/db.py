"""Engines and sessions for SQLite (embedded) and PostgreSQL (replicas).

Invariants:
- SQLite runs in WAL mode with foreign keys on and a busy timeout, so the embedded server and
  the local ``corral server token`` commands can share the file.
- ``postgresql://`` URLs use psycopg 3; connections are checked before use (``pool_pre_ping``)
  and time out, so a database that went away is a clean 503, not a hung request.
- ``writer()`` queues a process's writers on SQLite's single write lock (hot paths use it);
  ``free_writer()`` takes it only if it is free (a caller on the event loop must not wait).
- The URL (which may hold a password) is never logged or put in an error message:
  ``safe_url`` drops the password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "normalise_url", "safe_url"]


def normalise_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                         pool_timeout=5, connect_args={"connect_timeout": 5})


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = threading.Lock()

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on any exception."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def writer(self) -> AbstractContextManager[object]:
        """Held around a hot write path: on SQLite, one writer of this process at a time.

        SQLite has one write lock and its busy handler is not fair: forty threads polling for
        it starve some past the busy timeout (a 503). Queued here, a process's writers take
        turns and only the processes contend. PostgreSQL locks rows: nothing to hold."""
        return self._writer if self.backend == "sqlite" else nullcontext()

    def free_writer(self) -> AbstractContextManager[object] | None:
        """SQLite only: this process's writer slot, taken now if no one holds it (the caller
        releases it by leaving the returned context); None when it is taken, or on
        PostgreSQL (whose statements wait on the network: never on the event loop)."""
        if self.backend != "sqlite" or not self._writer.acquire(blocking=False):
            return None
        return _Release(self._writer)

    def dispose(self) -> None:
        self.engine.dispose()


class _Release:
    """Leaving it releases a lock already held."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
