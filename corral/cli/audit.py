"""Query, verify, prune and export the audit trail.

``list`` and ``show`` read what they can even from a damaged database (and say how many rows
they skipped); ``verify`` is the command that judges integrity and exits 1 on any broken link.
Hosts, paths, origins, reasons and commands are the agent's: tables and lines show them through
``corral.render`` (never as markup, control characters as visible escapes).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from corral.audit.query import (
    Event,
    ReadStats,
    head,
    iter_events,
    last_events,
    open_read,
    parse_time,
    prune,
)
from corral.cli import checks
from corral.cli.output import emit_json, plain
from corral.errors import CorralError, UserInputError
from corral.render import console, visible

__all__ = ["app"]

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DbOpt = Annotated[Path | None, typer.Option("--db", help="Audit database (default: state dir)",
                                            callback=checks.db_path)]
SandboxOpt = Annotated[str | None, typer.Option("--sandbox", "-s", help="Only this sandbox",
                                                callback=checks.sandbox_id)]
TypeOpt = Annotated[list[str] | None, typer.Option(
    "--type", "-t", help="Event type, e.g. proxy.deny or proxy.*", callback=checks.event_types)]
SinceOpt = Annotated[str | None, typer.Option(help="e.g. 1h, 30m, 7d or an ISO date",
                                              callback=checks.when)]
ProjectOpt = Annotated[str | None, typer.Option(
    "--project", help="The project's trail on corral server", callback=checks.resource_name)]
ServerOpt = Annotated[str | None, typer.Option(
    "--server", help="server URL (default: $CORRAL_SERVER)", callback=checks.server_url)]


def _db_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A damaged or foreign database file: one line, not a traceback."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.DatabaseError as err:
            raise CorralError(
                f"audit store: {err} (is it damaged? `corral audit verify` says where)"
            ) from None

    return run


def _console() -> Console:
    # Piped output is not a terminal: rich would assume 80 columns and fold every row.
    # Every string is data (hosts, paths, origins come from the agent): corral.render.console.
    width = None if sys.stdout.isatty() else 200
    return console(soft_wrap=False, width=width)


def _when(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _detail(ev: Event) -> str:
    """One line of an event's fields, raw: the caller shows it through corral.render."""
    d = ev.data
    if ev.type.startswith("proxy."):
        parts = [
            str(d.get("method", "")),
            f"{d.get('host', '')}{d.get('path', '')}",
            f"-> {d['status']}" if "status" in d else "",
            f"[{d.get('rule', '')}]",
            f"({d['reason']})" if d.get("reason") else "",
        ]
        return " ".join(p for p in parts if p)
    return " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
        for k, v in d.items()
    )


def _table(events: list[Event]) -> Table:
    table = Table("id", "time (UTC)", "sandbox", "seq", "type", "detail", show_lines=False)
    for ev in events:
        style = "red" if ev.type in ("proxy.deny", "error") else None
        table.add_row(
            str(ev.id), _when(ev.ts_us), ev.sandbox, str(ev.seq), ev.type, _detail(ev), style=style
        )
    return table


def _skipped(stats: ReadStats) -> None:
    if stats.skipped:
        print(
            f"corral: warning: {stats.skipped} damaged rows could not be read; run "
            "`corral audit verify`",
            file=sys.stderr,
        )


@app.command("list")
@_db_errors
def list_(
    sandbox: SandboxOpt = None,
    since: SinceOpt = None,
    type_: TypeOpt = None,
    limit: Annotated[int, typer.Option(help="Show at most the last N events (0: all)")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    db: DbOpt = None,
    project: ProjectOpt = None,
    human: Annotated[str | None, typer.Option("--human", help="With --project: runs launched "
                                              "by this person", callback=checks.email)] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="With --project: runs of this "
                                              "agent", callback=checks.agent_name)] = None,
    server: ServerOpt = None,
) -> None:
    """List audit events (with --project: the project's central trail on corral server)."""
    if project is not None:
        from corral.cli.remote_runs import audit_list

        audit_list(project, human, agent, type_, limit, server, as_json)
        return
    since_us = parse_time(since) if since else None
    con = open_read(db)
    stats = ReadStats()
    events = last_events(con, limit, sandbox=sandbox, since_us=since_us, types=type_, stats=stats)
    if as_json:
        for ev in events:
            sys.stdout.write(json.dumps(ev.to_dict(), sort_keys=True) + "\n")
    elif events:
        _console().print(plain(_table(events)))
    else:
        print("no matching events")
    _skipped(stats)


@app.command()
@_db_errors
def tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events")
    ] = False,
    sandbox: SandboxOpt = None,
    type_: TypeOpt = None,
    lines: Annotated[int, typer.Option("-n", help="Start with the last N events")] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    interval: Annotated[float, typer.Option(help="Poll interval in seconds", min=0.01,
                                            max=3600)] = 0.2,
    db: DbOpt = None,
) -> None:
    """Print the latest events; with -f, follow new ones as they are committed."""
    con = open_read(db)
    last = con.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    after = max(0, last - lines) if not sandbox and not type_ else 0
    first = (
        list(iter_events(con, sandbox=sandbox, types=type_, after_id=after))[-lines:]
        if lines
        else []
    )
    cursor = last
    _emit_lines(first, as_json)
    while follow:
        time.sleep(interval)
        new = list(iter_events(con, sandbox=sandbox, types=type_, after_id=cursor))
        if new:
            _emit_lines(new, as_json)
            cursor = new[-1].id
        else:
            top = con.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
            cursor = max(cursor, top)


def _emit_lines(events: list[Event], as_json: bool) -> None:
    for ev in events:
        if as_json:
            line = json.dumps(ev.to_dict(), sort_keys=True)
        else:
            line = visible(
                f"{ev.id:>8} {_when(ev.ts_us)} {ev.sandbox} #{ev.seq} {ev.type} {_detail(ev)}"
            )
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


@app.command()
@_db_errors
def show(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A sandbox id (or an event id)",
                                         callback=checks.audit_ident)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    db: DbOpt = None,
) -> None:
    """Show a sandbox's whole trail (who launched it, every event, how it closed)."""
    con = open_read(db)
    chain = con.execute(
        "SELECT actor, opened_us, last_seq, closed_us, status, ledger_seq, "
        "pruned FROM chains WHERE sandbox=?",
        (ident,),
    ).fetchone()
    if chain is None:
        if ident.isdigit():
            ev = next(iter_events(con, after_id=int(ident) - 1), None)
            if ev is not None and ev.id == int(ident):
                print(json.dumps(ev.to_dict(), indent=2, sort_keys=True))
                return
        raise UserInputError(
            f"no sandbox or event {ident!r} in the audit store (see `corral audit list`)"
        )
    stats = ReadStats()
    events = list(iter_events(con, sandbox=ident, stats=stats))
    if as_json:
        for ev in events:
            sys.stdout.write(json.dumps(ev.to_dict(), sort_keys=True) + "\n")
        return
    actor = json.loads(chain[0])
    who = actor.get("identity") or actor.get("user")
    if actor.get("sudo_user"):
        who = f"{who} (sudo by {actor['sudo_user']})"
    console = _console()
    state = (
        f"closed {_when(chain[3])} status {chain[4]!r}, ledger entry {chain[5]}"
        if chain[3]
        else "open"
    )
    console.print(
        f"sandbox {ident}: launched by {who} at {_when(chain[1])}; "
        f"{chain[2]} events; {state}" + ("; events pruned" if chain[6] else "")
    )
    if events:
        console.print(plain(_table(events)))
    _skipped(stats)


@app.command()
@_db_errors
def verify(
    head_: Annotated[
        str | None,
        typer.Option("--head", help="Ledger head recorded earlier (from `corral audit head`)",
                     callback=checks.ledger_head),
    ] = None,
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable report")] = False,
    project: ProjectOpt = None,
    server: ServerOpt = None,
) -> None:
    """Walk every chain and the ledger; name the first broken link; exit 1 on failure.
    With --project: the server's copy of the project's runs, and this host's heads."""
    if project is not None:
        from corral.cli.remote_runs import audit_verify

        audit_verify(project, server, as_json)
        return
    from corral.audit.verify import verify as run_verify

    con = open_read(db)
    res = run_verify(con, head_)
    if as_json:
        emit_json({"ok": res.ok, "events": res.events, "chains": res.chains,
                   "ledger": res.ledger, "head": res.head, "problems": list(res.problems)})
        if not res.ok:
            raise typer.Exit(1)
        return
    if res.ok:
        print(
            f"ok: {res.events} events in {res.chains} chains, {res.ledger} ledger entries; "
            f"head {res.head}"
        )
        return
    for problem in res.problems:
        print(f"BROKEN: {problem}")
    raise CorralError(f"audit trail verification failed: {res.problems[0]}")


@app.command("push")
def push_cmd(
    server: Annotated[str | None, typer.Option(
        "--server", help="Only the leftovers of this server (default: each leftover's own)",
        callback=checks.server_url)] = None,
) -> None:
    """Ship the trails of --project runs whose server was away (the leftovers), with your own
    token (CORRAL_TOKEN or your stored login): only the runs you launched."""
    from corral.cli.audit_push import push_leftovers

    if push_leftovers(server):
        raise typer.Exit(1)


@app.command("head")
@_db_errors
def head_cmd(db: DbOpt = None) -> None:
    """Print the ledger head (record it elsewhere; `verify --head` checks against it)."""
    seq, h = head(open_read(db))
    print(h)
    print(f"({seq} ledger entries)", file=sys.stderr)


@app.command("prune")
@_db_errors
def prune_cmd(
    before: Annotated[
        str,
        typer.Option(
            help="Delete closed trails that ended before this (ISO date or a duration like 90d)",
            callback=checks.when,
        ),
    ],
    db: DbOpt = None,
) -> None:
    """Delete the events of closed trails; their closing hashes stay in the ledger."""
    chains, events = prune(db, parse_time(before, what="--before"))
    print(f"pruned {events} events of {chains} closed trails; the ledger is kept")


@app.command()
@_db_errors
def export(
    format_: Annotated[str, typer.Option("--format", help="jsonl or otlp",
                                         callback=checks.choice("jsonl", "otlp"))] = "jsonl",
    endpoint: Annotated[
        str | None, typer.Option(help="OTLP/HTTP logs URL, e.g. http://localhost:4318/v1/logs",
                                 callback=checks.endpoint)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="jsonl file (default stdout)")
    ] = None,
    sandbox: SandboxOpt = None,
    since: SinceOpt = None,
    type_: TypeOpt = None,
    timeout: Annotated[float, typer.Option(help="OTLP: seconds to keep trying", min=0.1,
                                           max=86400)] = 10.0,
    db: DbOpt = None,
) -> None:
    """Export events as JSON lines or to an OpenTelemetry collector (OTLP/HTTP logs)."""
    from corral.audit.export import export_jsonl, export_otlp

    since_us = parse_time(since) if since else None
    con = open_read(db)
    events = iter_events(con, sandbox=sandbox, since_us=since_us, types=type_)
    if format_ == "jsonl":
        if output is None:
            export_jsonl(events, sys.stdout)
        else:
            with output.open("w") as f:
                n = export_jsonl(events, f)
            print(f"exported {n} events to {output}", file=sys.stderr)
    elif format_ == "otlp":
        if not endpoint:
            raise UserInputError(
                "--format otlp needs --endpoint URL (e.g. http://localhost:4318/v1/logs)"
            )
        n = export_otlp(events, endpoint, timeout=timeout)
        print(f"exported {n} events to {endpoint}", file=sys.stderr)
    else:
        raise UserInputError(f"--format {format_!r}: use jsonl or otlp")
