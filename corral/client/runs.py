"""What a launcher calls on ``corral server`` for one run: register, heartbeat, ship the audit
trail, ask approvals, end; and who an MCP caller's token is (``introspect``). Stdlib only
(``corral.client.http``).

Invariants:
- ``register`` uses the launching user's token once; everything after it uses the run's own
  sandbox token, which this object holds in memory only (root side; never in the sandbox).
- ``ship_events`` sends batches of at most ``MAX_BATCH`` events in seq order and returns the
  server's cursor: everything up to it is committed on the server. Resending is safe (the
  server is idempotent on (run, seq)), so after any ``ServerUnavailable`` the launcher asks
  ``cursor()`` and ships from there; nothing is lost or counted twice.
- Failures are ``ServerUnavailable`` (retry later, keep running) or ``Refused`` (this request
  will never pass: a broken chain, a dead token); both are ``ClientError``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from corral.client.http import Client, ServerUnavailable

__all__ = ["MAX_BATCH", "Decision", "Heartbeat", "ServerRun", "event_json", "fetch_policy",
           "introspect"]

MAX_BATCH = 500
EVENT_FIELDS = ("seq", "ts", "type", "actor", "data", "v", "prev", "hash")


def _quote(segment: str) -> str:
    import urllib.parse

    return urllib.parse.quote(segment, safe="")


def event_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A local store row (``ts_us`` or ``ts``) as the server takes it."""
    out = {k: row[k] for k in EVENT_FIELDS if k != "ts"}
    out["ts"] = row["ts_us"] if "ts_us" in row else row["ts"]
    return out


class Heartbeat(NamedTuple):  # not a dataclass: on the launch path (~8 ms)
    kill_reason: str | None  # set: stop the run, and say this
    killed_by: str | None
    acked: int


class Decision(NamedTuple):
    status: str  # pending | approved | denied
    decided_by: str | None
    reason: str | None


def fetch_policy(url: str, token: str, project: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The project's resolved policy: ``{"yaml", "digest", "policies"}``."""
    with Client(url, token, timeout=timeout, user_agent="corral-launcher") as client:
        answer = client.get(f"/projects/{_quote(project)}/policy")
    assert isinstance(answer, dict)
    return answer


def introspect(url: str, token: str, project: str, presented: str, *,
               timeout: float = 10.0) -> dict[str, Any]:
    """Who ``presented`` is, asked with the launcher's own ``token``: ``{"actor", "kind",
    "subject", "email", ...}``; ``Refused`` when it is no caller of ``project``."""
    with Client(url, token, timeout=timeout, user_agent="corral-launcher") as client:
        answer = client.post(f"/projects/{_quote(project)}/callers", {"token": presented})
    assert isinstance(answer, dict)
    return answer


class ServerRun:
    """One registered run, talking over one persistent connection with its sandbox token."""

    def __init__(self, url: str, run_id: str, token: str, *, timeout: float = 10.0) -> None:
        self.id, self.url = run_id, url
        self.client = Client(url, token, timeout=timeout, user_agent="corral-launcher")
        self._path = f"/runs/{_quote(run_id)}"

    @classmethod
    def register(cls, url: str, user_token: str, project: str, *, host: str, sandbox: str,
                 policy_digest: str, human: str | None = None, agent: str | None = None,
                 command: Sequence[str] = (), timeout: float = 10.0) -> ServerRun:
        body: dict[str, Any] = {"host": host, "sandbox": sandbox,
                                "policy_digest": policy_digest, "command": list(command)}
        if human is not None:
            body["human"] = human
        if agent is not None:
            body["agent"] = agent
        with Client(url, user_token, timeout=timeout, user_agent="corral-launcher") as client:
            answer = client.post(f"/projects/{_quote(project)}/runs", body)
        return cls(url, answer["run"]["id"], answer["token"], timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def heartbeat(self) -> Heartbeat:
        answer = self.client.post(self._path + "/heartbeat", {})
        kill = answer.get("kill")
        return Heartbeat(kill["reason"] if kill else None, kill["by"] if kill else None,
                         int(answer["acked"]))

    def end(self, exit_status: int | None, reason: str | None = None,
            events: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """End the run; ``events`` (at most ``MAX_BATCH``, past the cursor) are stored first,
        in the same request and transaction."""
        body: dict[str, Any] = {"exit_status": exit_status}
        if reason is not None:
            body["reason"] = reason[:500]
        if events:
            body["events"] = [event_json(e) for e in events]
        answer = self.client.post(self._path + "/end", body)
        self.close()
        assert isinstance(answer, dict)
        return answer

    def cursor(self) -> int:
        return int(self.client.get(self._path + "/events/cursor")["acked"])

    def ship_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Ship events (seq order) in batches; returns the server's cursor after the last."""
        acked = -1
        batch: list[dict[str, Any]] = []
        for row in events:
            batch.append(event_json(row))
            if len(batch) == MAX_BATCH:
                acked = self._ship(batch)
                batch = []
        if batch or acked < 0:
            acked = self._ship(batch) if batch else self.cursor()
        return acked

    def _ship(self, batch: list[dict[str, Any]]) -> int:
        return int(self.client.post(self._path + "/events", {"events": batch})["acked"])

    def request_approval(self, tool: str, args: Mapping[str, Any],
                         rule: str | None = None, caller: str | None = None) -> str:
        body: dict[str, Any] = {"tool": tool, "args": dict(args)}
        if rule is not None:
            body["rule"] = rule[:500]
        if caller is not None:
            body["caller"] = caller
        return str(self.client.post(self._path + "/approvals", body)["id"])

    def wait_decision(self, approval_id: str, timeout: float) -> Decision:
        """Long-poll until the request is decided or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, min(self.client.timeout - 1.0, deadline - time.monotonic()))
            try:
                answer = self.client.get(f"{self._path}/approvals/{_quote(approval_id)}"
                                         f"?wait={left:.1f}")
            except ServerUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
                continue
            if answer["status"] != "pending" or time.monotonic() >= deadline:
                return Decision(answer["status"], answer.get("decided_by"),
                                answer.get("reason"))
