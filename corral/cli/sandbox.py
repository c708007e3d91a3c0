"""Inspect, enter, end and clean up sandboxes: list live ones (with their command and
workspace), run a second command in one (``exec``), end one (``kill``), collect leftovers of
killed launchers (``gc``). Commands and paths are shown through ``corral.render.visible``."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from corral.cli import checks
from corral.cli.output import emit_json, plain
from corral.cli.remote import SERVER_OPT
from corral.errors import CorralError
from corral.render import console, visible

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    project: str | None = typer.Option(None, "--project", callback=checks.resource_name,
                                       help="List this project's runs on corral server."),
    all_: bool = typer.Option(False, "--all", help="With --project: ended runs too."),
    server: str | None = SERVER_OPT,
) -> None:
    """Show sandboxes in the registry: id, command, workspace, policies, uid, launcher pid, age,
    state. With --project, the project's runs on corral server."""
    if project is not None:
        from corral.cli.remote_runs import sandbox_list

        sandbox_list(project, all_, server, as_json)
        return
    from corral.sandbox import registry

    try:
        entries = registry.entries()
    except PermissionError:
        raise CorralError("the sandbox registry is readable by root only (try sudo)") from None
    table = Table("id", "command", "workspace", "policies", "uid", "pid", "age", "state")
    now = time.time()
    rows = []
    for e in entries:
        state = "running" if registry.launcher_alive(e) else "leftover"
        rows.append({"id": e.id, "command": list(e.command), "workspace": e.workspace,
                     "policies": list(e.policies), "uid": e.uid, "pid": e.pid,
                     "created": e.created, "state": state})
        command = " ".join(e.command)
        command = command if len(command) <= 40 else command[:39] + "…"
        table.add_row(e.id, visible(command) or "-", visible(e.workspace or "-"),
                      ", ".join(e.policies) or "(none)", str(e.uid), str(e.pid),
                      _age(now - e.created), state + (" (run gc)" if state == "leftover" else ""))
    if as_json:
        emit_json(rows)
        return
    console().print(plain(table))  # policy paths may hold "[...]": never markup


@app.command("gc")
def gc() -> None:
    """Remove what killed launchers left behind (registry entries, cgroups, directories)."""
    from corral.sandbox import collect_leftovers

    done = collect_leftovers()
    for sid in done.removed:
        typer.echo(f"removed sandbox {sid}")
    if not done.removed:
        typer.echo("nothing to collect")
    if done.problems:
        raise CorralError("; ".join(done.problems))


IdArg = Annotated[str, typer.Argument(help="The sandbox's id (see corral sandbox list).",
                                      callback=checks.sandbox_id)]


def _audit(sandbox_id: str, type_: str, **data: object) -> None:
    """Durable in the sandbox's own trail before the action (the launcher writes it too)."""
    from corral.audit.store import AuditStore

    with AuditStore.open() as store:
        store.trail(sandbox_id).emit(type_, **data)


@app.command("kill")
def kill(
    sandbox_id: IdArg,
    project: str | None = typer.Option(None, "--project", callback=checks.resource_name,
                                       help="The run is on corral server (implied by a "
                                       "server run id)."),
    reason: str | None = typer.Option(None, "--reason", help="Why (server runs; shown to "
                                      "the launcher and recorded)."),
    server: str | None = SERVER_OPT,
) -> None:
    """End a live sandbox: kill its processes; its launcher tears it down (audited). A server
    run id (or --project) asks that run's launcher to stop it at its next heartbeat."""
    from corral.cli.remote_runs import is_run_id, sandbox_kill

    if project is not None or is_run_id(sandbox_id):
        if not is_run_id(sandbox_id):
            raise typer.BadParameter(f"{sandbox_id!r} is not a server run id (see "
                                     "corral sandbox list --project P)", param_hint="ID")
        sandbox_kill(sandbox_id, reason, server)
        return
    import os

    from corral.sandbox import find_entry
    from corral.sandbox import kill as kill_sandbox

    entry = find_entry(sandbox_id)
    by = os.environ.get("SUDO_USER") or str(os.getuid())
    _audit(entry.id, "sandbox.kill", by=by)
    count = kill_sandbox(entry)
    typer.echo(f"sandbox {entry.id} ended ({count} process{'es' * (count != 1)} killed, torn "
               "down by its launcher)")


@app.command("exec", context_settings={"allow_extra_args": True,
                                       "ignore_unknown_options": True})
def exec_(
    sandbox_id: IdArg,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.",
                                                 metavar="-- CMD [ARGS...]")],
) -> None:
    """Run a second command in a live sandbox: same user, namespaces, seccomp, Landlock and
    cgroup as its first (exit status is the command's)."""
    import os
    import subprocess

    from corral.sandbox import enter_command, find_entry, supervise

    entry = find_entry(sandbox_id)
    argv = command[1:] if command[:1] == ["--"] else command
    tty = os.isatty(0)
    args, env, fds, cgroup = enter_command(entry, argv, tty=tty)
    _audit(entry.id, "exec.start", argv=list(argv), via="sandbox exec", tty=tty, cwd="/workspace")
    pty = None
    try:
        if tty:
            from corral.sandbox import Pty

            pty = Pty(0)
            stdio = (pty.slave, pty.slave, pty.slave)
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            stdio = (0, out_w, err_w)

        def prepare() -> None:
            cgroup.attach_self()
            if tty:
                import fcntl
                import termios

                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(args, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], env=env,
                                pass_fds=fds, preexec_fn=prepare, start_new_session=True)
        if pty is not None:
            pty.close_slave()
            pty.raw()
            pumps = [(0, pty.master, False), (pty.master, 1, True)]
        else:
            os.close(out_w)
            os.close(err_w)
            os.set_blocking(out_r, False)
            os.set_blocking(err_r, False)
            pumps = [(out_r, 1, True), (err_r, 2, True)]
        outcome = supervise(proc, pumps=pumps, wall=None, idle=None, cpu_usage=lambda: 0,
                            agent_pid=lambda: proc.pid, kill_all=proc.kill,
                            on_winch=pty.resize if pty is not None else None)
    finally:
        for fd in fds:
            os.close(fd)
        if pty is not None:
            pty.close()
    raise typer.Exit(outcome.returncode)
