"""WAL checkpoints run on their own thread, and the WAL stays bounded whatever that thread does
(corral.audit.checkpoint)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from corral.audit import AuditStore
from corral.audit import checkpoint as ckpt

COMMITS = 1500  # one event per commit; unchecked, the WAL would hold >= 3 frames per commit


def _wal_bytes(store: AuditStore) -> int:
    return Path(f"{store.path}-wal").stat().st_size


def test_commits_leave_checkpoints_to_their_own_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "EVERY", 16)
    monkeypatch.setattr(ckpt, "LIMIT", 64)
    threads: list[str] = []
    real = ckpt.Checkpointer._pass

    def spy(self: ckpt.Checkpointer, con: object) -> bool:
        threads.append(threading.current_thread().name)
        return real(self, con)  # type: ignore[arg-type]

    monkeypatch.setattr(ckpt.Checkpointer, "_pass", spy)
    store = AuditStore.open(tmp_path / "audit.db")
    try:
        # SQLite's automatic checkpoint would run inside a commit, on the emitting thread
        assert store._con.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        trail = store.trail("sb-ckpt")
        for i in range(COMMITS):
            trail.emit("proxy.allow", host="example.com", rule="t:1", status=200, bytes_in=i)
        assert threads and set(threads) == {"corral-audit-checkpoint"}
        # the WAL started over again and again: a third of what no checkpoint leaves
        assert _wal_bytes(store) < COMMITS * 4096
    finally:
        store.close()


def test_a_starved_checkpointer_leaves_it_to_the_committing_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "LIMIT", 64)
    monkeypatch.setattr(ckpt.Checkpointer, "_run", lambda self: None)  # never checkpoints
    store = AuditStore.open(tmp_path / "audit.db")
    try:
        trail = store.trail("sb-starved")
        for i in range(COMMITS):
            trail.emit("proxy.allow", host="example.com", rule="t:1", status=200, bytes_in=i)
        assert _wal_bytes(store) < COMMITS * 4096
        assert store.reader().execute("SELECT count(*) FROM events").fetchone()[0] == COMMITS
    finally:
        store.close()
