"""Mode 2 assembled: one command in one sandbox, with its egress and its audit (``corral run``).

This is where the parts meet for ``corral run``, as ``mode1`` is for ``corral mcp``: the host
check, the audit store, the proxy child and DNS stub when the policy has egress rules, the
sandbox and the command. ``corral.cli.run`` parses the arguments, builds the spec, forks the
proxy child early (its imports overlap the policy's resolution) and renders what ends here.

Invariants:
- The host is checked (root, tools, kernel features) before the audit store is touched, and
  the store is open before anything is created: a store that cannot be written stops the run
  with nothing created.
- The proxy child handed in is owned from the call on: it serves this run when the policy has
  egress rules, and is stopped otherwise or when anything before the run fails.
- The proxy child gets the secrets only once the audit store is open (``configure`` after
  ``open_audit``), so no request can be made before its record can be.
- Without egress rules there is no proxy, but the run's network attempts are still recorded
  (``corral.runtime.attempts``: DNS names asked, destinations refused) in its trail.
- A proxy that fails during the run makes the run's status 125, whatever the command returned.
- However the run ends, the proxy is stopped and ``finish(audit)`` runs (closing the trails).
- With a ``report`` (``--project``), the run registers with the server once the sandbox exists
  (its command may start meanwhile when the offline rules let the run go on without the
  server; a refusal then stops it and makes the status 125) and ends there after
  ``finish(audit)`` closed the local trail, so its last events ship too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.policy import ResolvedPolicy
    from corral.runtime.audit import LaunchAudit
    from corral.runtime.egress import EgressHooks
    from corral.runtime.proxyproc import ProxyProcess
    from corral.runtime.report import Reporter
    from corral.sandbox import SandboxSpec

__all__ = ["run_agent"]

EXIT_CORRAL = 125


def _egress(policy: ResolvedPolicy | None, proxy: ProxyProcess | None,
            upstream_proxy: str | None) -> EgressHooks | None:
    """The proxy and DNS stub for a policy with egress rules (else None, the child stopped)."""
    hooks = None
    try:
        from corral.sandbox import check_host

        check_host()  # say what the host lacks before the audit store is touched
        if policy is not None and policy.rules:
            from corral.runtime.config import upstream_proxy as configured
            from corral.runtime.egress import EgressHooks

            upstream = configured(upstream_proxy, exit_code=EXIT_CORRAL)
            hooks = EgressHooks(policy, upstream_proxy=upstream, configure=False, proc=proxy)
        return hooks
    finally:
        if hooks is None and proxy is not None:
            proxy.kill()  # no egress rules, or a failure before the proxy was needed


def run_agent(
    spec: SandboxSpec,
    argv: Sequence[str],
    *,
    policy: ResolvedPolicy | None,
    proxy: ProxyProcess | None,
    upstream_proxy: str | None,
    finish: Callable[[LaunchAudit], None],
    wrap_proxy_audit: Callable[[Any], Any] | None = None,
    report: Reporter | None = None,
) -> int:
    """Run ``argv`` in a sandbox made from ``spec``; the command's exit status (125 when
    corral's own part failed). ``wrap_proxy_audit`` wraps the proxy's trail (a live echo of
    denials); ``finish`` gets the audit once the sandbox is gone."""
    from corral.runtime.audit import open_audit
    from corral.sandbox import run_command

    hooks = _egress(policy, proxy, upstream_proxy)
    try:
        audit = open_audit(policy, mode="run", command=list(argv))  # before anything else
    except BaseException:
        if hooks is not None:
            hooks.detach()
        raise
    code = EXIT_CORRAL
    try:
        if hooks is not None:
            sink = audit.proxy_audit  # this run's trail
            hooks.proxy_audit = wrap_proxy_audit(sink) if wrap_proxy_audit else sink
            hooks.spend_server = report is not None  # budgets on the server too
            hooks.configure()
            spec = hooks.prepare(spec)
            run_hooks: Any = hooks
        else:
            from corral.runtime.attempts import Attempts

            run_hooks = Attempts(audit.trail)
            spec = run_hooks.prepare(spec)
        if report is not None:
            report.store, report.inner = audit.store.path, run_hooks
            run_hooks = report
        code = run_command(spec, argv, audit=audit, hooks=run_hooks)
        code = EXIT_CORRAL if hooks is not None and hooks.failed else code
        if report is not None and report.registration_refused():
            code = EXIT_CORRAL  # the server refused the run it had started for
        return code
    finally:
        if hooks is not None:
            hooks.detach()  # a no-op after the run; stops an unattached proxy child
        finish(audit)
        if report is not None:
            report.end(code)
