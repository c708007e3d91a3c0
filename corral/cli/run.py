"""``corral run``: the lean launch path (no typer, no rich, no pydantic unless a policy needs it).

``corral run [-p POLICY]... [--allow HOST[:PORT]]... [--ro PATH]... [--rw DIR]... [--memory SIZE]
[--timeout DURATION] [--idle DURATION] [--workspace DIR] [--home DIR|NAME] [--env K=V]...
[--upstream-proxy URL] [--quiet] [--project P [--agent A] [--server URL]] CMD [ARGS...]`` (the
upstream proxy also comes from
``upstream_proxy`` in the config file). The quick flags (``--allow`` to ``--idle``) are one more
policy composed with the ``-p`` ones (``corral.policy.quick``), so they show up in
``corral policy resolve`` given the same flags, and the strictest limit wins.
With ``--project P`` the policy is project P's on ``corral server`` (``corral.runtime.project``:
held to the trust rules, the local ``-p``/quick flags/``--workspace`` may only narrow it) and
the run registers there, heartbeats and ships its audit trail (``corral.runtime.report``);
the server client (``corral.client``: a socket and llhttp) loads only then.
As in ``docker run``, everything from the first positional argument on is the command
(``corral run ls -la`` needs no ``--``); ``--`` before the command is accepted too.

Bad input of any kind (a missing command, a bad policy, a missing or hidden workspace,
conflicting flags, an empty value, a malformed upstream proxy) prints one ``corral: ...`` line
naming the option and exits 125 before anything is created. ``-h``/``--help`` prints the
options and exits 0.

A run whose stdin is a terminal has no idle limit unless one is set (``--idle`` or a policy's
``limits.idle``): an interactive shell or agent waits at its prompt as long as its user does.

With stderr on a terminal, each request the proxy denies is also shown as it happens, one
``corral: denied ...`` line (``corral.cli.denials``); ``--quiet`` turns that off.

``--home`` never creates an arbitrary host path: a path must be an existing directory owned by
the invoking user; a bare NAME is a home under ``homes_dir()`` (created, owned by that user).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from corral.errors import CorralError

if TYPE_CHECKING:
    from collections.abc import Callable

    from corral.policy.quick import QuickPolicy
    from corral.policy.resolved import ResolvedPolicy
    from corral.runtime import LaunchAudit, ProxyProcess
    from corral.runtime.project import ProjectPolicy
    from corral.runtime.report import Reporter
    from corral.sandbox.spec import SandboxSpec

__all__ = ["EXIT_CORRAL_FAILURE", "build_spec", "homes_dir", "parse", "run_main"]

EXIT_CORRAL_FAILURE = 125
_ENV_DENY = frozenset({"PATH", "HOME", "USER", "LOGNAME"})
_USAGE = "corral run [OPTIONS] CMD [ARGS...]"
_HOME_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _fail(message: str) -> NoReturn:
    raise CorralError(message, exit_code=EXIT_CORRAL_FAILURE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see 'corral run --help')")


class _Formatter(argparse.HelpFormatter):
    """A fixed width: argparse would otherwise import ``shutil`` and ask the terminal its size
    on every ``add_argument`` (help is rare; the launch path is not)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def _parser() -> _Parser:
    p = _Parser(prog="corral run", usage=_USAGE, add_help=False, formatter_class=_Formatter,
                description="Run CMD inside a new sandbox. Options go before the command; "
                "everything from CMD on is the command's own (no '--' needed). The exit status "
                "is the command's; corral's own failures exit 125, a command that cannot run "
                "126, not found 127, a wall or idle timeout 124.")
    p.add_argument("-h", "--help", action="store_true", help="Show this help and exit.")
    p.add_argument("-p", "--policy", action="append", default=[], metavar="POLICY",
                   help="A policy file or builtin:NAME; repeat to compose. Without one the "
                   "sandbox has no network egress at all.")
    p.add_argument("--allow", action="append", default=[], metavar="HOST[:PORT]",
                   help="Allow requests to HOST (ports 80 and 443, or PORT), inspected and "
                   "audited: one 'inspect' rule; repeatable, '*.example.com' for subdomains.")
    p.add_argument("--ro", action="append", default=[], metavar="PATH",
                   help="Make a host path visible read-only at the same path; repeatable.")
    p.add_argument("--rw", action="append", default=[], metavar="DIR",
                   help="Mount a host directory writable at the same path (owned by the agent "
                   "inside, like the workspace); repeatable.")
    p.add_argument("--memory", metavar="SIZE", help="Memory limit, e.g. 2GiB (or 'none').")
    p.add_argument("--timeout", metavar="DURATION",
                   help="Wall-time limit, e.g. 30m or 2h (exit 124 when reached).")
    p.add_argument("--idle", metavar="DURATION",
                   help="Stop after this long without output, input or CPU use, e.g. 10m "
                   "(default: a policy's limits.idle, 30m; none when stdin is a terminal).")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="No live line on stderr for each denied request.")
    p.add_argument("--workspace", metavar="DIR",
                   help="Host directory mounted writable at /workspace (default: a fresh "
                   "directory removed after the run).")
    p.add_argument("--home", metavar="DIR|NAME",
                   help="The agent's home: an existing directory you own, or a NAME for a "
                   "persistent home under ~/.local/share/corral/homes (default: ephemeral).")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="Set an environment variable inside the sandbox; repeatable.")
    p.add_argument("--upstream-proxy", metavar="URL",
                   help="Send all egress through this HTTP proxy, http://HOST:PORT (default: "
                   "upstream_proxy in config.yaml).")
    p.add_argument("--project", metavar="P",
                   help="Run under project P's policy from corral server and report the run "
                   "there (local -p and quick flags may only narrow it).")
    p.add_argument("--agent", metavar="A", help="The project's agent identity this run is.")
    p.add_argument("--server", metavar="URL",
                   help="corral server's URL (default: $CORRAL_SERVER); token: $CORRAL_TOKEN.")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]",
                   help="The command to run and its arguments.")
    return p


def help_text() -> str:
    return _parser().format_help()


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options, then the command: the first positional argument and all that follows it."""
    ns, rest = _parser().parse_known_args(argv)
    if rest:
        _fail(f"unknown option {rest[0]!r} (see 'corral run --help')")
    cmd = list(ns.cmd)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if ns.help:
        return ns, cmd
    for flag in ("policy", "workspace", "home", "env", "upstream_proxy", "allow", "ro", "rw",
                 "memory", "timeout", "idle", "project", "agent", "server"):
        values = getattr(ns, flag)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not value.strip():
                _fail(f"--{flag.replace('_', '-')}: must not be empty")
    if not cmd:
        _fail(f"no command given (usage: {_USAGE})")
    if not ns.project and (ns.agent or ns.server):
        _fail(f"--{'agent' if ns.agent else 'server'} needs --project")
    return ns, cmd


def homes_dir() -> Path:
    """Where ``--home NAME`` homes live: ``CORRAL_HOMES``, else the invoking user's
    ``~/.local/share/corral/homes``."""
    from corral.sandbox import invoking_user

    override = os.environ.get("CORRAL_HOMES")
    return Path(override) if override else Path(invoking_user()[2], ".local/share/corral/homes")


def _home(value: str) -> Path:
    """``--home``: an existing directory of the invoking user's, or a NAME under ``homes_dir``."""
    from corral.sandbox import expand_user, invoking_user

    uid, gid, _ = invoking_user()
    if "/" not in value and value[0] not in ".~" and set(value) <= _HOME_NAME_CHARS:
        base = homes_dir()
        missing = [d for d in (base, *base.parents) if not d.exists()]
        for d in reversed(missing):  # owned by the user, not root, inside their own home
            d.mkdir(mode=0o700)
            os.chown(d, uid, gid)
        return base / value
    path = expand_user(Path(value)).absolute()
    try:
        st = path.stat()
    except OSError:
        _fail(f"--home {value}: no such directory (create it, or give a bare NAME for a home "
              f"under {homes_dir()})")
    if not path.is_dir():
        _fail(f"--home {value}: not a directory")
    if st.st_uid != uid:
        _fail(f"--home {value}: owned by uid {st.st_uid}, not by you (uid {uid})")
    return path


def quick_flags(ns: argparse.Namespace) -> QuickPolicy | None:
    """The quick flags as a policy (``None`` if none was given); ``PolicyError`` if bad."""
    if not (ns.allow or ns.ro or ns.rw or ns.memory or ns.timeout or ns.idle):
        return None  # without importing the policy types (the launch path of a bare run)
    from corral.policy.quick import QuickFlags, quick_policy

    flags = QuickFlags(tuple(ns.allow), tuple(ns.ro), tuple(ns.rw), ns.memory, ns.timeout, ns.idle)
    return quick_policy(flags) if flags.given() else None


def build_spec(ns: argparse.Namespace) -> tuple[SandboxSpec, ResolvedPolicy | None]:
    """The sandbox spec and the resolved policy (``None`` without ``-p``)."""
    from corral.sandbox.spec import SandboxSpec

    env: dict[str, str] = {}
    for item in ns.env:
        key, eq, value = item.partition("=")
        if not eq or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise CorralError(f"--env {item!r}: expected NAME=VALUE", exit_code=EXIT_CORRAL_FAILURE)
        if key in _ENV_DENY:
            raise CorralError(f"--env {key}: corral sets {key} inside the sandbox",
                              exit_code=EXIT_CORRAL_FAILURE)
        env[key] = value
    kwargs: dict[str, object] = {"env": env}
    rp = None
    policy_ws: Path | None = None
    policy_home: Path | None = None
    quick = quick_flags(ns)
    from corral.policy.settings import Limits

    limits = Limits()
    if ns.project:
        project = _project_policy(ns, quick)
        rp = project.policy
        kwargs.update(policies=tuple(rp.names), files=rp.files)
        limits = rp.limits
        policy_ws, policy_home = rp.files.workspace, rp.files.home
    elif ns.policy or quick is not None:
        from corral.policy import resolve

        # --workspace overrides policies; the quick flags are one more policy
        rp = resolve(list(ns.policy), workspace=ns.workspace, quick=quick)
        kwargs.update(policies=tuple(rp.names), files=rp.files)
        limits = rp.limits
        policy_ws, policy_home = rp.files.workspace, rp.files.home
    if os.isatty(0) and (rp is None or "limits.idle" not in rp.provenance):
        limits = limits._replace(idle=None)  # a terminal waits for its user: no default idle
    kwargs["limits"] = limits
    if ns.workspace and not Path(ns.workspace).is_dir():
        _fail(f"--workspace {ns.workspace}: no such directory")
    workspace = Path(ns.workspace).absolute() if ns.workspace else policy_ws
    home = _home(ns.home) if ns.home else policy_home
    if ns.workspace and ns.home and Path(ns.workspace).resolve() == Path(ns.home).resolve():
        raise CorralError("--workspace and --home must be different directories",
                          exit_code=EXIT_CORRAL_FAILURE)
    return SandboxSpec(workspace=workspace, home=home, **kwargs), rp  # type: ignore[arg-type]


def _project_policy(ns: argparse.Namespace, quick: QuickPolicy | None) -> ProjectPolicy:
    """``--project``: the server's policy, narrowed by the local input (125 if it widens)."""
    from corral.runtime.project import Pull, project_policy, target

    t = target(ns.project, ns.agent, ns.server)
    pull = Pull(t)
    # While the server answers, what the launch imports anyway (the sandbox, the audit store,
    # the reporter): the wait for the server is then off the launch's critical path.
    from corral.audit import AuditStore  # noqa: F401
    from corral.runtime import open_audit, report  # noqa: F401
    from corral.sandbox import check_host, run_command  # noqa: F401

    # the -p files are loaded there only when the compiled policy is not cached
    found = project_policy(t, list(ns.policy), quick, ns.workspace, pull=pull)
    if found.offline:
        print(f"corral: --project {ns.project}: {found.offline}", file=sys.stderr)
    ns.project_found, ns.project_target = found, t
    return found


def run_main(argv: list[str]) -> int:
    # No garbage collections while the sandbox is set up (a few ms of scanning short-lived
    # launch objects); ``run_command`` turns them back on once the command runs, so a long run
    # still collects. At the end everything is frozen: the interpreter's exit then skips its
    # final full collection, the process being about to end anyway.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_main(argv)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def _run_main(argv: list[str]) -> int:
    early: ProxyProcess | None = None
    try:
        ns, cmd = parse(argv)
        if ns.help:
            sys.stdout.write(help_text())
            return 0
        if ns.upstream_proxy is not None:  # bad input first, whether or not a policy needs it
            from corral.runtime import upstream_proxy

            upstream_proxy(ns.upstream_proxy, exit_code=EXIT_CORRAL_FAILURE)
        if ns.policy or ns.allow or ns.project:
            from corral.runtime import ProxyProcess

            # a policy may have egress rules: fork the proxy child before resolving it, so its
            # imports (the CA's critical path) overlap ours; it waits for the policy
            # and is killed if no proxy is needed. It holds nothing but its control sockets.
            early = ProxyProcess()
        spec, policy = build_spec(ns)
        from corral.runtime import run_agent

        wrap: Callable[[Any], Any] | None = None
        if os.isatty(2) and not ns.quiet:
            from corral.cli.denials import echo_denials

            wrap = echo_denials  # a live line on stderr for each denied request
        proxy, early = early, None  # run_agent owns the child from here
        return run_agent(spec, cmd, policy=policy, proxy=proxy, upstream_proxy=ns.upstream_proxy,
                         finish=_after_run, wrap_proxy_audit=wrap, report=_reporter(ns, cmd))
    except (CorralError, OSError) as err:
        print(f"corral: {err}", file=sys.stderr)
        return EXIT_CORRAL_FAILURE
    except KeyboardInterrupt:
        print("corral: interrupted; the sandbox was torn down", file=sys.stderr)
        return 130
    except Exception as err:
        from corral.sandbox import Terminated

        if not isinstance(err, Terminated):
            raise
        print(f"corral: {err}; the sandbox was torn down", file=sys.stderr)
        return 128 + err.signum
    finally:
        if early is not None:  # bad input or a failed check before the proxy was needed
            early.kill()


def _reporter(ns: argparse.Namespace, cmd: list[str]) -> Reporter | None:
    if not ns.project:
        return None
    from corral.runtime.report import Reporter

    found: ProjectPolicy = ns.project_found
    return Reporter(ns.project_target, digest=found.digest, command=cmd,
                    require_server=found.require_server, start_unregistered=True)


def _after_run(audit: LaunchAudit) -> None:
    """Close the trails and the store, say whether auditing failed, print the summary."""
    broken = audit.store.failure
    sandboxes = list(audit.seen)
    try:
        audit.close()
    except Exception as err:  # the store failed: the run's egress was already stopped
        broken = broken or str(err)
    if broken:
        print(f"corral: the audit store failed during the run ({broken}); the sandbox's egress "
              "was stopped", file=sys.stderr)
    for sid in sandboxes:
        try:
            from corral.audit.summary import summary

            sys.stderr.write(summary(sid, audit.store.path, color=os.isatty(2)))
            sys.stderr.flush()
        except Exception as err:
            print(f"corral: no audit summary for sandbox {sid}: {err}", file=sys.stderr)
