"""The one-screen summary ``corral run`` prints after each run.

Invariants:
- Hosts, binding names and reasons come from the agent or its traffic: every one is shown
  through ``corral.render.visible`` and never as rich markup, in the plain and the colour form.
- A TLS handshake the agent refused with the proxy (``error`` events of component
  ``proxy.tls``, see ``corral.proxy.connect``) is named here, not only in the trail: it is what
  a user sees when a client does not accept corral's certificate.
"""

from __future__ import annotations

import io
import sqlite3
from collections import Counter
from pathlib import Path

from corral.audit.query import Event, iter_events, open_read
from corral.render import visible

__all__ = ["summary"]

MAX_HOSTS = 12
MAX_TLS_LINES = 4
AGENT_TLS = "proxy.tls"  # the component corral.proxy.connect gives agent-side TLS failures

Row = tuple[str, str, str, str]


class _Tally:
    """What one sandbox's trail adds up to; every text in it has been through ``visible``.

    A plain class, not a dataclass: this module is on ``corral run``'s launch path, where
    ``dataclasses`` (with ``inspect``, ``ast``, ``dis``) costs ~8 ms to import."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.creds: Counter[str] = Counter()
        self.tls_failed: Counter[str] = Counter()
        self.dns_denied = 0
        self.exit_status = "unknown"
        self.events = 0

    def add(self, ev: Event) -> None:
        self.events += 1
        kind = ev.type.partition(".")[2]
        if ev.type.startswith("proxy."):
            self.counts[(visible(str(ev.data.get("host", "?"))), kind)] += 1
        elif ev.type == "credential.inject":
            self.creds[visible(str(ev.data.get("binding", "?")))] += 1
        elif ev.type == "dns.query" and ev.data.get("rcode") != "NOERROR":
            self.dns_denied += 1
        elif ev.type == "sandbox.exit":
            self.exit_status = str(ev.data.get("status"))
            if ev.data.get("reason"):
                self.exit_status += f" ({visible(str(ev.data['reason']))})"
        elif ev.type == "error" and ev.data.get("component") == AGENT_TLS:
            self.tls_failed[visible(str(ev.data.get("message", "?")))] += 1

    def hosts(self) -> list[str]:
        """Every host, the busiest first and denied ones before all (what a user acts on)."""
        totals: Counter[str] = Counter()
        for (h, _), n in self.counts.items():
            totals[h] += n
        return sorted(totals, key=lambda h: (-self.counts[(h, "deny")], -totals[h], h))


def _tally(sandbox_id: str, path: str | Path | None) -> _Tally:
    con: sqlite3.Connection = open_read(path)
    try:
        tally = _Tally()
        for ev in iter_events(con, sandbox=sandbox_id):
            tally.add(ev)
        return tally
    finally:
        con.close()


def _tail(tally: _Tally, hosts: list[str], sandbox_id: str) -> list[str]:
    """The lines under the host table."""
    tail: list[str] = []
    if len(hosts) > MAX_HOSTS:
        tail.append(f"… and {len(hosts) - MAX_HOSTS} more hosts")
    if not hosts:
        tail.append("no network requests")
    if tally.dns_denied:
        tail.append(f"DNS names refused: {tally.dns_denied}")
    tls = sorted(tally.tls_failed.items(), key=lambda m: (-m[1], m[0]))
    for message, n in tls[:MAX_TLS_LINES]:
        tail.append(message + (f" (×{n})" if n > 1 else ""))
    if len(tls) > MAX_TLS_LINES:
        tail.append(f"… and {len(tls) - MAX_TLS_LINES} more TLS failures")
    used = ", ".join(f"{b} ×{n}" for b, n in sorted(tally.creds.items()))
    tail.append(f"credentials used: {used or 'none'}")
    tail.append(f"full trail: corral audit show {sandbox_id}")
    return tail


def summary(
    sandbox_id: str, path: str | Path | None = None, *, width: int = 100, color: bool = False
) -> str:
    """Render allowed/denied/inspected counts by host, credentials used, exit status, and the
    command that shows the full trail, as text (rich, no colour unless asked)."""
    tally = _tally(sandbox_id, path)
    hosts = tally.hosts()
    c = tally.counts
    rows = [(h, str(c[(h, "allow")]), str(c[(h, "inspect")]), str(c[(h, "deny")]))
            for h in hosts[:MAX_HOSTS]]
    head = (f"corral sandbox {sandbox_id}: {tally.events} audit events,"
            f" exit status {tally.exit_status}")
    tail = _tail(tally, hosts, sandbox_id)
    if not color:  # plain text: no rich import after every run (it costs ~40 ms of startup)
        return "\n".join([head, *_plain_table(rows), *tail]) + "\n"
    return _rich(head, rows, tail, width)


def _plain_table(rows: list[Row]) -> list[str]:
    if not rows:
        return []
    table = [("host", "allowed", "inspected", "denied"), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in table]


def _rich(head: str, rows: list[Row], tail: list[str], width: int) -> str:
    from rich.table import Table
    from rich.text import Text

    from corral.render import console as data_console

    out = io.StringIO()
    console = data_console(file=out, width=width, force_terminal=True)  # NO_COLOR still applies
    console.print(Text.assemble(("corral", "bold"), " ", head.removeprefix("corral ")))
    if rows:
        grid = Table("host", "allowed", "inspected", "denied", box=None, pad_edge=False)
        for row in rows:
            grid.add_row(*row)
        console.print(grid)
    for line in tail:
        console.print(line)
    return out.getvalue()
