"""The server side of ``corral sandbox``, ``corral audit`` and ``corral approvals``: what
``--project P`` (or a server run id) selects. The local commands stay as they are.

Invariants: every name, command and reason shown comes from other users or agents and goes
through ``remote.show`` / ``visible``; ``audit verify --project`` exits 1 on any problem the
server reports and on a local chain whose head differs from the server's copy at that seq.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from corral.cli.remote import client, quote, show
from corral.errors import CorralError
from corral.render import visible

__all__ = ["RUN_ID", "approvals_decide", "approvals_list", "approvals_revoke",
           "approvals_standing", "audit_list", "audit_verify", "is_run_id", "sandbox_kill",
           "sandbox_list"]

RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def is_run_id(value: str) -> bool:
    """A server run id (a UUID); local sandbox ids never have that shape."""
    return RUN_ID.fullmatch(value) is not None


def sandbox_list(project: str, all_: bool, server: str | None, as_json: bool) -> None:
    payload = client(server).get(f"/projects/{quote(project)}/runs" + ("?all=true" if all_
                                                                          else ""))
    rows = [{**r, "command": " ".join(r["command"])[:40], "started": r["started_at"][:19]}
            for r in payload["runs"]]
    show(rows, ["id", "status", "human", "agent", "host", "command", "events", "started"],
         as_json, payload)


def sandbox_kill(run_id: str, reason: str | None, server: str | None) -> None:
    body = {"reason": reason} if reason else {}
    answer = client(server).post(f"/runs/{quote(run_id)}/kill", body)
    print(visible(f"kill requested for run {run_id} ({answer['reason']}); its launcher stops "
                  "it at its next heartbeat"))


def audit_list(project: str, human: str | None, agent: str | None, types: list[str] | None,
               limit: int, server: str | None, as_json: bool) -> None:
    import json
    import urllib.parse

    query: list[tuple[str, str]] = [("limit", str(limit or 5000))]
    query += [(k, v) for k, v in (("human", human), ("agent", agent)) if v]
    c = client(server)
    events: list[dict[str, Any]] = []
    for type_ in types or [None]:  # type: ignore[list-item]
        q = query + ([("type", type_)] if type_ else [])
        events += c.get(f"/projects/{quote(project)}/audit?{urllib.parse.urlencode(q)}")[
            "events"]
    events.sort(key=lambda e: e["id"])
    if as_json:
        for e in events:
            print(json.dumps(e, sort_keys=True))
        return
    if not events:
        print("no matching events")
        return
    rows = [{"run": e["run"][:8], "seq": e["seq"], "type": e["type"], "human": e["human"],
             "agent": e["agent"], "detail": " ".join(f"{k}={v}" for k, v in
                                                     sorted(e["data"].items()))[:80]}
            for e in events]
    show(rows, ["run", "seq", "type", "human", "agent", "detail"], False, None)


def _local_mismatches(heads: dict[str, dict[str, Any]]) -> list[str]:
    """Compare the server's copy with this host's own trail, where it has the chain."""
    from corral.audit.query import open_read

    try:
        con = open_read()
    except CorralError:  # no local trail here (or not readable): nothing to compare
        return []
    out = []
    try:
        for run_id, head in heads.items():
            if head["seq"] == 0:
                continue
            row = con.execute("SELECT hash FROM events WHERE sandbox=? AND seq=?",
                              (head["sandbox"], head["seq"])).fetchone()
            if row is not None and row[0] != head["head"]:
                out.append(f"run {run_id}: the server's copy differs from this host's trail "
                           f"of sandbox {head['sandbox']} at seq {head['seq']}")
    except sqlite3.Error:
        return out
    finally:
        con.close()
    return out


def audit_verify(project: str, server: str | None, as_json: bool) -> None:
    import json

    report = client(server).get(f"/projects/{quote(project)}/audit/verify")
    report["problems"] += _local_mismatches(report.get("heads", {}))
    report["ok"] = not report["problems"]
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif report["ok"]:
        print(f"ok: {report['events']} events in {report['runs']} runs of {project}, "
              f"{report['ledger']['entries']} ledger entries; head {report['ledger']['head']}")
    else:
        for problem in report["problems"]:
            print(visible(f"BROKEN: {problem}"))
    if not report["ok"]:
        raise CorralError(f"audit trail verification failed: {report['problems'][0]}")


def approvals_list(project: str, all_: bool, server: str | None, as_json: bool) -> None:
    payload = client(server).get(f"/projects/{quote(project)}/approvals"
                                 + ("?all=true" if all_ else ""))
    rows = [{**a, "args": str(a["args"])[:50], "run": a["run"][:8]}
            for a in payload["approvals"]]
    show(rows, ["id", "status", "tool", "args", "human", "run", "decided_by"], as_json, payload)


def approvals_standing(project: str, server: str | None, as_json: bool) -> None:
    payload = client(server).get(f"/projects/{quote(project)}/approvals/standing")
    rows = [{**s, "agent": s["agent"] or "-", "policy": s["policy_digest"][:12],
             "since": s["created_at"][:19]} for s in payload["standing"]]
    show(rows, ["id", "tool", "scope", "agent", "policy", "created_by", "since"], as_json,
         payload)


def approvals_revoke(project: str, ident: int, server: str | None) -> None:
    gone = client(server).delete(f"/projects/{quote(project)}/approvals/standing/{ident}")
    print(visible(f"revoked standing approval {ident}: {gone['tool']} {gone['scope']} "
                  "(the next identical call asks again)"))


def approvals_decide(project: str, ident: str, approve: bool, reason: str | None,
                     server: str | None, always: bool = False) -> None:
    verb = "approve" if approve else "deny"
    body: dict[str, Any] = {"reason": reason} if reason else {}
    if always:
        body["always"] = True
    answer = client(server).post(f"/projects/{quote(project)}/approvals/{quote(ident)}/{verb}",
                                 body)
    scope = " (always: later identical calls too)" if answer.get("always") else ""
    print(visible(f"{answer['status']} {answer['id']}{scope}: {answer['tool']} "
                  f"(run {answer['run']})"))
