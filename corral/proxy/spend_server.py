"""The budget ledger of a project run's proxy (``corral run --project``): the policy's own
``budgets:`` in-process, and the server's (org, team, project, agent, run) through
``POST /api/v1/runs/{id}/spend/reserve|renew|settle`` with the run's sandbox token, so budgets
hold across every machine the project runs on.

The run registers as the sandbox starts, after the proxy serves: the launcher sends the run's
server URL, id and token over the proxy's control socket (``configure``, the same frame the
``platform`` relay reads), or why there is none (``{"unavailable": why}``).

Invariants:
- Fail closed on money: a request is reserved on the server before it goes upstream. No server
  configuration within ``wait`` seconds, a server that cannot be reached or a refused call
  raises ``LedgerUnavailable`` (the agent gets the provider-shaped 503 naming the cause); the
  local reservation is released. There is no fallback to local budgets alone.
- ``reserve`` blocks on the network: the proxy calls it off its event loop (``blocking``).
  ``renew`` and ``settle`` never block: they are queued to one worker thread, which retries a
  settle a few times; a settle that never arrives is charged in full by the server's expiry.
- The sandbox token lives only in this process's memory (the launcher's control frame).
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from corral.client.http import Client, ClientError, Refused
from corral.spend import Budget, LedgerUnavailable, LocalLedger, Refusal, Reservation

__all__ = ["ServerLedger"]

SETTLE_TRIES = 5


class ServerLedger:
    blocking = True  # ``reserve`` does network I/O: call it off the event loop

    def __init__(self, local: LocalLedger | None = None, *, wait: float = 15.0,
                 timeout: float = 10.0) -> None:
        self.local = local or LocalLedger()
        self.wait, self.timeout = wait, timeout
        self.url: str | None = None
        self.token: str | None = None
        self.run: str | None = None
        self.unavailable: str | None = None
        self._known = threading.Event()
        self._lock = threading.Lock()
        self._ids: dict[int, int] = {}  # local reservation id -> the server's
        self._clients: list[Client] = []
        self._jobs: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def configure(self, info: Mapping[str, Any]) -> None:
        """The launcher's frame: ``{"url", "token", "run"}`` or ``{"unavailable": why}``."""
        if "unavailable" in info:
            self.unavailable = str(info["unavailable"])[:500]
        else:
            self.url, self.token, self.run = str(info["url"]), str(info["token"]), str(info["run"])
        self._known.set()

    # -- Ledger -----------------------------------------------------------------------------

    def reserve(self, budgets: Sequence[Budget], amount: int) -> Reservation | Refusal:
        got = self.local.reserve(budgets, amount)
        if isinstance(got, Refusal):
            return got
        try:
            answer = self._call("reserve", {"amount_micro_usd": amount})
        except BaseException:
            self.local.settle(got, 0)
            raise
        refused = answer.get("refused") if isinstance(answer, dict) else None
        if refused is not None:
            self.local.settle(got, 0)
            return _refusal(refused)
        with self._lock:
            self._ids[got.id] = int(answer["id"])
        return got

    def renew(self, reservation: Reservation) -> bool:
        live = self.local.renew(reservation)
        with self._lock:
            server_id = self._ids.get(reservation.id)
        if live and server_id is not None:
            self._queue("renew", {"id": server_id})
        return live

    def settle(self, reservation: Reservation, actual: int, usage: Any = None) -> None:
        self.local.settle(reservation, actual, usage)
        with self._lock:
            server_id = self._ids.pop(reservation.id, None)
        if server_id is None:
            return
        body: dict[str, Any] = {"id": server_id, "cost_micro_usd": actual}
        if usage is not None:
            tokens = usage.tokens
            body.update(model=str(usage.model)[:200],
                        provider=str(usage.api).partition(".")[0][:32],
                        input_tokens=tokens.input, output_tokens=tokens.output,
                        cache_write_tokens=tokens.cache_write,
                        cache_read_tokens=tokens.cache_read, flagged=bool(usage.flagged))
        self._queue("settle", body)

    def expire(self) -> int:
        return self.local.expire()

    # -- the server -------------------------------------------------------------------------

    def _client(self) -> Client:
        with self._lock:
            if self._clients:
                return self._clients.pop()
        assert self.url is not None
        return Client(self.url, self.token, timeout=self.timeout, user_agent="corral-proxy")

    def _call(self, verb: str, body: dict[str, Any]) -> Any:
        if not self._known.wait(self.wait):
            raise LedgerUnavailable("this run is not registered with corral server yet, and a "
                                    "project run's budgets are kept there")
        if self.unavailable is not None:
            raise LedgerUnavailable(self.unavailable)
        client = self._client()
        try:
            answer = client.post(f"/runs/{urllib.parse.quote(self.run or '', safe='')}"
                                 f"/spend/{verb}", body)
        except ClientError as err:
            client.close()
            raise LedgerUnavailable(f"corral server ({self.url}) keeps this project's budgets "
                                    f"and could not reserve: {err}") from None
        with self._lock:
            self._clients.append(client)
        return answer

    def _queue(self, verb: str, body: dict[str, Any]) -> None:
        self._jobs.put((verb, body))
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, daemon=True,
                                                name="corral-spend")
                self._worker.start()

    def _work(self) -> None:
        while True:
            verb, body = self._jobs.get()
            for attempt in range(SETTLE_TRIES if verb == "settle" else 1):
                try:
                    self._call(verb, body)
                    break
                except LedgerUnavailable as err:
                    if isinstance(err.__context__, Refused):
                        break  # the server said no (the run ended): retrying changes nothing
                    time.sleep(min(0.2 * 2 ** attempt, 5.0))


def _refusal(obj: Mapping[str, Any]) -> Refusal:
    resets = obj.get("resets")
    when = dt.datetime.fromisoformat(str(resets)) if resets else None
    budget = Budget(int(obj["amount_micro_usd"]), obj["period"], str(obj["label"])[:200])
    return Refusal(budget, int(obj["spent_micro_usd"]), int(obj["reserved_micro_usd"]),
                   int(obj["needed_micro_usd"]), when)
