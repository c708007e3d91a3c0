"""A run reporting to ``corral server``: register, heartbeat, ship its audit trail, end.

``Reporter`` sits beside the sandbox as a ``RunHooks`` wrapper: when every layer exists
(``started``, the sandbox id known) it registers the run and starts one thread that ships the
run's committed events from the local store and heartbeats; ``end(status)`` (after the local
trail is closed) ships the rest and ends the run on the server.

Invariants:
- The local store stays the write-ahead record: nothing here writes to it, and the shipper
  reads only committed rows (its own read connection). The server is never in the way of a
  local record.
- Shipping resumes from the server's cursor after any failure (``ServerRun.cursor``), and the
  server is idempotent on (run, seq): a server down mid-run loses nothing and counts nothing
  twice. The run goes on while the server is away.
- A kill request that comes with a heartbeat kills the sandbox's processes at once; the run
  then ends with the reason on stderr and on the server.
- While any event is not acknowledged or the run is not ended on the server, a leftover file
  (``$CORRAL_HOME/leftovers/SANDBOX.json``, root-only, no token in it) says so;
  ``corral audit push`` ships from it with the launching user's own token. A run that could not
  even register at start leaves one with no run id (unless the project requires the server:
  then the run is refused, 125).
- The command starts before the run is registered only when the run could go on without the
  server anyway (the project does not require it and no platform or metered rule needs the
  run's id); a registration the server refuses then kills the sandbox's processes at once and
  the run's status is 125 (``registration_refused``). Otherwise the command waits for it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import dirs
from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.client import ServerRun
    from corral.runtime.project import Target

__all__ = ["COLS", "MAX_BATCH", "Reporter", "launcher_alive", "leftover_dir", "local_events"]

EXIT_CORRAL = 125
COLS = "seq, ts_us, type, actor, data, v, prev, hash"
SHIP_S = 0.5
MAX_BATCH = 500  # the server's batch limit (corral.client.runs.MAX_BATCH; not imported here)


def _interval(name: str, default: float) -> float:
    try:
        return max(0.05, float(os.environ.get(name, default)))
    except ValueError:
        return default


def leftover_dir() -> Path:
    return dirs.state_dir() / "leftovers"


def local_events(db: Path, sandbox: str, after: int, limit: int = 500) -> list[dict[str, Any]]:
    """Committed events of ``sandbox`` with seq > ``after``, in seq order."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        con.row_factory = sqlite3.Row
        rows = con.execute(f"SELECT {COLS} FROM events WHERE sandbox=? AND seq>? ORDER BY seq "
                           "LIMIT ?", (sandbox, after, limit)).fetchall()
        return [dict(r) for r in rows]
    finally:
        con.close()


class Reporter:
    def __init__(self, target: Target, *, digest: str, command: Sequence[str],
                 require_server: bool, store: Path | None = None, inner: Any = None,
                 start_unregistered: bool = False) -> None:
        self.target, self.digest, self.command = target, digest, list(command)
        self.store, self.require_server, self.inner = store or Path(), require_server, inner
        self.run: ServerRun | None = None
        self.sandbox: str | None = None
        self.acked = 0
        self.kill_reason: str | None = None
        self.refused: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one request at a time on the run's connection
        self._away = False  # the last request failed: ask the server's cursor before shipping
        self._registering: threading.Thread | None = None
        # the caller (corral run) stops the run on a late refusal (``registration_refused``)
        self.start_unregistered = start_unregistered
        self.register_error: CorralError | None = None

    # -- RunHooks ---------------------------------------------------------------------------

    def started(self, sb: Any) -> Mapping[str, str]:
        self.sandbox = sb.id
        # Registering (a round trip) overlaps the proxy's start. A run that may go on without
        # the server (offline rules) does not wait for it at all: its command starts while
        # the registration is under way, and a refusal then kills it (125). A run that needs
        # the server (--require-server) or its run id (platform and metered rules reach the
        # server with it) starts its command only once registered.
        self._registering = threading.Thread(target=self._register_quietly, args=(sb,),
                                             daemon=True, name="corral-register")
        self._registering.start()
        wait = not self._may_start_unregistered()
        try:
            env = dict(self.inner.started(sb)) if self.inner is not None else {}
        finally:
            if wait:
                self._registering.join()
        if wait:
            if self.register_error is not None:
                raise self.register_error
            self._tell_proxy()
        self._thread = threading.Thread(target=self._loop, args=(sb,), daemon=True,
                                        name="corral-report")
        self._thread.start()
        return env

    def _may_start_unregistered(self) -> bool:
        rules = getattr(getattr(self.inner, "policy", None), "rules", None) or ()
        needs_run = any(r.action == "platform" or getattr(r, "meter", None) for r in rules)
        return self.start_unregistered and not self.require_server and not needs_run

    def _register_quietly(self, sb: Any) -> None:
        try:
            self._register(sb.id)
        except CorralError as err:
            self.register_error = err
            if self._may_start_unregistered():
                _say(f"{err}; the run is stopped")
                sb.kill_all()  # it started without waiting: it must not go on unregistered

    def registration_refused(self) -> bool:
        """Whether the server refused to register the run (after waiting for the answer):
        its command was stopped and the run's status is 125."""
        if self._registering is not None:
            self._registering.join()
        return self.register_error is not None

    def finished(self, sb: Any) -> None:
        if self.inner is not None:
            self.inner.finished(sb)

    def _tell_proxy(self) -> None:
        """A proxy with ``platform`` or metered rules learns where they go: this run's relay
        and budget ledger on the server, with the run's sandbox token (never a secret: those
        stay on the server)."""
        proc = getattr(self.inner, "proc", None)
        rules = getattr(getattr(self.inner, "policy", None), "rules", None) or ()
        if proc is None or not any(r.action == "platform" or getattr(r, "meter", None)
                                   for r in rules):
            return
        if self.run is not None:
            proc.send_relay({"url": self.run.url, "token": self.run.client.token,
                             "run": self.run.id})
        else:
            proc.send_relay({"unavailable": f"corral server {self.target.url} could not be "
                             "reached when this run started, so its platform and metered "
                             "requests have no relay or budget ledger (there is no fallback)"})

    # -- the run ----------------------------------------------------------------------------

    def _register(self, sandbox: str) -> None:
        from corral.client import ClientError, ServerRun, ServerUnavailable

        t = self.target
        try:
            self.run = ServerRun.register(t.url, t.token, t.project, host=socket.gethostname(),
                                          sandbox=sandbox, policy_digest=self.digest,
                                          agent=t.agent, command=self.command)
        except ServerUnavailable as err:
            if self.require_server:
                raise CorralError(f"--project {t.project}: {err}; the project requires the "
                                  "server", exit_code=EXIT_CORRAL) from None
            _say(f"{err}; the run goes on, its trail waits for 'corral audit push'")
        except ClientError as err:
            raise CorralError(f"--project {t.project}: registering the run: {err}",
                              exit_code=EXIT_CORRAL) from None
        self._leftover(None)

    def _leftover(self, exit_status: int | None, reason: str | None = None) -> None:
        folder = dirs.ensure_state_dir() / "leftovers"
        folder.mkdir(mode=0o700, exist_ok=True)
        body = {"sandbox": self.sandbox, "run": self.run.id if self.run else None,
                "launcher": [os.getpid(), _start_time(os.getpid())],
                "server": self.target.url, "project": self.target.project,
                "agent": self.target.agent, "digest": self.digest, "command": self.command,
                "host": socket.gethostname(), "store": str(self.store),
                "exit_status": exit_status, "reason": reason, "ended": exit_status is not None}
        tmp = folder / f".{self.sandbox}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        os.replace(tmp, folder / f"{self.sandbox}.json")

    def _ship(self) -> None:
        """Ship what is committed locally past the server's cursor (caller holds the lock)."""
        assert self.run is not None and self.sandbox is not None
        while True:
            batch = local_events(self.store, self.sandbox, self.acked)
            if not batch:
                return
            self.acked = self.run.ship_events(batch)

    def _ship_all_but_last(self) -> list[dict[str, Any]]:
        """Ship all but the last batch of what is committed locally; return that batch (it
        rides with the run's end: one round trip for a short run)."""
        assert self.run is not None and self.sandbox is not None
        while True:
            batch = local_events(self.store, self.sandbox, self.acked)
            if len(batch) < MAX_BATCH:
                return batch
            self.acked = self.run.ship_events(batch)

    def _loop(self, sb: Any) -> None:
        from corral.client import Refused, ServerUnavailable

        beat_s = _interval("CORRAL_HEARTBEAT_S", 15.0)
        ship_s = min(SHIP_S, beat_s)
        next_beat = 0.0
        away = False
        import time

        if self._registering is not None:
            self._registering.join()  # nothing to report before the run exists
        while not self._stop.wait(ship_s) and self.run is not None and self.refused is None:
            try:
                with self._lock:
                    if away:
                        self.acked = self.run.cursor()  # resume from what the server holds
                    self._ship()
                    if time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + beat_s
                        beat = self.run.heartbeat()
                        if beat.kill_reason is not None and self.kill_reason is None:
                            self.kill_reason = f"{beat.kill_reason} (by {beat.killed_by})"
                            _say(f"run {self.run.id} killed from the server: "
                                 f"{self.kill_reason}")
                            sb.kill_all()
                if away:
                    _say(f"the server is back; shipped the trail up to event {self.acked}")
                away = False
            except ServerUnavailable as err:
                if not away:
                    _say(f"{err}; the run goes on, its trail waits")
                away = True
            except Refused as err:
                self.refused = str(err)
                _say(f"the server refused this run's report ({err}); its trail waits for "
                     "'corral audit push'")
            finally:
                self._away = away

    def end(self, exit_status: int) -> None:
        """After the local trail is closed: ship the rest and end the run on the server."""
        from corral.client import ClientError

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.sandbox is None or self.registration_refused():
            return  # nothing of it on the server (a refusal was said): nothing to ship
        reason = f"killed from the server: {self.kill_reason}" if self.kill_reason else None
        if self.run is None or self.refused is not None:
            self._leftover(exit_status, reason)
            return
        try:
            with self._lock:
                if self._away:
                    self.acked = self.run.cursor()  # what the server holds, after a gap
                last = self._ship_all_but_last()
                self.run.end(exit_status, reason, events=last)
        except ClientError as err:
            self._leftover(exit_status, reason)
            _say(f"{err}; this run's trail waits for 'corral audit push'")
            return
        finally:
            self.run.close()
        (leftover_dir() / f"{self.sandbox}.json").unlink(missing_ok=True)


def _start_time(pid: int) -> int:
    """The process's start time (clock ticks since boot): a pid alone may be reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def launcher_alive(leftover: Mapping[str, Any]) -> bool:
    """Whether the launcher that wrote ``leftover`` still runs (its run may still be live)."""
    pid, start = (leftover.get("launcher") or [0, 0])[:2]
    return bool(pid) and isinstance(pid, int) and _start_time(pid) == start != 0


def _say(message: str) -> None:
    sys.stderr.write(f"\r\ncorral: {message}\n" if os.isatty(2) else f"corral: {message}\n")
    sys.stderr.flush()
