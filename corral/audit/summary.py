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

from corral.audit.query import iter_events, open_read
from corral.render import visible

__all__ = ["summary"]

MAX_HOSTS = 12
MAX_TLS_LINES = 4
AGENT_TLS = "proxy.tls"  # the component corral.proxy.connect gives agent-side TLS failures


def summary(
    sandbox_id: str, path: str | Path | None = None, *, width: int = 100, color: bool = False
) -> str:
    """Render allowed/denied/inspected counts by host, credentials used, exit status, and the
    command that shows the full trail, as text (rich, no colour unless asked)."""
    con: sqlite3.Connection = open_read(path)
    try:
        counts: Counter[tuple[str, str]] = Counter()
        creds: Counter[str] = Counter()
        dns_denied = 0
        tls_failed: Counter[str] = Counter()
        exit_status: str = "unknown"
        events = 0
        for ev in iter_events(con, sandbox=sandbox_id):
            events += 1
            kind = ev.type.partition(".")[2]
            if ev.type.startswith("proxy."):
                counts[(visible(str(ev.data.get("host", "?"))), kind)] += 1
            elif ev.type == "credential.inject":
                creds[visible(str(ev.data.get("binding", "?")))] += 1
            elif ev.type == "dns.query" and ev.data.get("rcode") != "NOERROR":
                dns_denied += 1
            elif ev.type == "sandbox.exit":
                exit_status = str(ev.data.get("status"))
                if ev.data.get("reason"):
                    exit_status += f" ({visible(str(ev.data['reason']))})"
            elif ev.type == "error" and ev.data.get("component") == AGENT_TLS:
                tls_failed[visible(str(ev.data.get("message", "?")))] += 1
    finally:
        con.close()

    totals: Counter[str] = Counter()
    for (h, _), n in counts.items():
        totals[h] += n
    # One screen: the busiest hosts, denied ones first (they are what a user needs to act on).
    hosts = sorted(totals, key=lambda h: (-counts[(h, "deny")], -totals[h], h))
    rows = [(h, str(counts[(h, "allow")]), str(counts[(h, "inspect")]),
             str(counts[(h, "deny")])) for h in hosts[:MAX_HOSTS]]
    head = f"corral sandbox {sandbox_id}: {events} audit events, exit status {exit_status}"
    tail: list[str] = []
    if len(hosts) > MAX_HOSTS:
        tail.append(f"… and {len(hosts) - MAX_HOSTS} more hosts")
    if not hosts:
        tail.append("no network requests")
    if dns_denied:
        tail.append(f"DNS names refused: {dns_denied}")
    for message, n in sorted(tls_failed.items(), key=lambda m: (-m[1], m[0]))[:MAX_TLS_LINES]:
        tail.append(message + (f" (×{n})" if n > 1 else ""))
    if len(tls_failed) > MAX_TLS_LINES:
        tail.append(f"… and {len(tls_failed) - MAX_TLS_LINES} more TLS failures")
    if creds:
        tail.append("credentials used: " + ", ".join(f"{b} ×{n}" for b, n in sorted(creds.items())))
    else:
        tail.append("credentials used: none")
    tail.append(f"full trail: corral audit show {sandbox_id}")
    if not color:  # plain text: no rich import after every run (it costs ~40 ms of startup)
        lines = [head]
        if rows:
            table = [("host", "allowed", "inspected", "denied"), *rows]
            widths = [max(len(r[i]) for r in table) for i in range(4)]
            lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                      for r in table]
        return "\n".join([*lines, *tail]) + "\n"

    from rich.table import Table
    from rich.text import Text

    from corral.render import console as data_console

    out = io.StringIO()
    console = data_console(file=out, width=width, force_terminal=color, no_color=not color)
    console.print(Text.assemble(("corral", "bold"), " ", head.removeprefix("corral ")))
    if rows:
        grid = Table("host", "allowed", "inspected", "denied", box=None, pad_edge=False)
        for row in rows:
            grid.add_row(*row)
        console.print(grid)
    for line in tail:
        console.print(line)
    return out.getvalue()
