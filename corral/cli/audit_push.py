"""``corral audit push``: ship what ``corral run|mcp --project`` could not (the leftovers).

A launcher whose server went away writes ``$CORRAL_HOME/leftovers/SANDBOX.json`` (root-only,
no token in it: ``corral.runtime.report``). Pushing ships each one with the launching user's
own token (``CORRAL_TOKEN`` or the stored login for that leftover's server): a run the server
never saw is registered now (with that token) and reported with its new sandbox token; a run it
knows is completed through ``POST /runs/{run}/push``, which takes only the token of the human
who launched it (403 for anyone else, 409 once ended).

Invariants:
- Events are read from the run's own local store (the write-ahead record) past the server's
  cursor and shipped in seq order in batches of at most 500; the server is idempotent on
  (run, seq), so a push cut short is simply pushed again: nothing lost, nothing twice.
- A leftover whose launcher still runs is left alone (its run is live and reports itself).
- A leftover is deleted only once the server holds every local event of the run and the run
  has ended there; otherwise it stays, and the command exits 1 naming why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from corral.errors import CorralError

__all__ = ["push_leftovers"]

MAX_BATCH = 500


def _events(left: dict[str, Any], after: int) -> list[dict[str, Any]]:
    from corral.client import event_json
    from corral.runtime.report import local_events

    rows = local_events(Path(left["store"]), str(left["sandbox"]), after, MAX_BATCH)
    return [event_json(r) for r in rows]


def _save(path: Path, left: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(left, out)
    os.replace(tmp, path)


def _register(path: Path, left: dict[str, Any], token: str) -> str:
    """A run the server never saw: register it with the user's token, ship it all with the
    run's sandbox token, end it. Returns what was done."""
    from corral.client import ServerRun

    run = ServerRun.register(str(left["server"]), token, str(left["project"]),
                             host=str(left["host"]), sandbox=str(left["sandbox"]),
                             policy_digest=str(left["digest"]), agent=left.get("agent"),
                             command=list(left.get("command") or []))
    left["run"] = run.id
    _save(path, left)  # a push cut short from here on continues this run, not a new one
    try:
        acked = 0
        while batch := _events(left, acked):
            acked = run.ship_events(batch)
        run.end(left.get("exit_status"), _reason(left))
    finally:
        run.close()
    return f"registered as run {run.id}; {acked} events shipped; ended"


def _reason(left: dict[str, Any]) -> str:
    reason = left.get("reason")
    if left.get("ended"):
        return f"{reason}; shipped by corral audit push" if reason else \
            "shipped by corral audit push"
    return "the launcher ended without ending the run; shipped by corral audit push"


def _complete(left: dict[str, Any], token: str) -> str:
    """A run the server knows: ship the rest past its cursor with the user's token, and end."""
    from corral.cli.remote import quote
    from corral.client import Client

    run_id = str(left["run"])
    path = f"/runs/{quote(run_id)}"
    with Client(str(left["server"]), token) as client:
        known = client.get(path)["run"]
        acked = int(known["events"])
        if known["status"] == "ended":
            if _events(left, acked):
                raise CorralError(f"run {run_id} has ended on the server with {acked} events, "
                                  "but this host holds more; they cannot be added any more")
            return f"run {run_id}: already complete on the server ({acked} events)"
        while True:
            batch = _events(left, acked)
            last = len(batch) < MAX_BATCH
            body: dict[str, Any] = {"events": batch, "end": last}
            if last:
                body.update(exit_status=left.get("exit_status"), reason=_reason(left)[:500])
            answer = client.post(path + "/push", body)
            acked = int(answer["acked"])
            if last:
                return f"run {run_id}: shipped up to event {acked}; ended"


def push_leftovers(server: str | None) -> int:
    """Push every leftover of this host; the number that could not be pushed."""
    from corral.cli.remote import client as make_client
    from corral.client import ClientError
    from corral.render import visible
    from corral.runtime.report import launcher_alive, leftover_dir

    folder = leftover_dir()
    try:
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(".json"))
    except FileNotFoundError:
        paths = []
    except PermissionError:
        raise CorralError(f"{folder}: not readable; the leftovers are root's: run "
                          "'sudo corral audit push' (your own login is still the one used)"
                          ) from None
    if not paths:
        print("no leftovers: every run's trail is on its server")
        return 0
    failed = 0
    for path in paths:
        try:
            left = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(visible(f"{path.name}: unreadable ({err}); left in place"))
            failed += 1
            continue
        if not left.get("ended") and launcher_alive(left):
            print(visible(f"sandbox {left.get('sandbox')}: still running; it reports itself"))
            continue
        url = server or str(left.get("server"))
        if server and server.rstrip("/") != str(left.get("server", "")).rstrip("/"):
            continue  # another server's leftover
        try:
            token = make_client(url).token or ""
            done = _complete(left, token) if left.get("run") else _register(path, left, token)
        except ClientError as err:
            print(visible(f"sandbox {left.get('sandbox')} (project {left.get('project')}): "
                          f"{err}; left for a later push"))
            failed += 1
            continue
        except CorralError as err:
            print(visible(f"sandbox {left.get('sandbox')}: {err}"))
            failed += 1
            continue
        path.unlink(missing_ok=True)
        print(visible(f"sandbox {left.get('sandbox')} (project {left.get('project')}): {done}"))
    return failed
