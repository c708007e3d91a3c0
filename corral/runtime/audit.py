"""The one audit adapter between the launcher and ``corral.audit`` (both modes).

``LaunchAudit`` opens the store before anything is created (a store that cannot be written
stops the run: one line, exit 125, nothing created), keeps one trail per sandbox (id = the
harness's sandbox id, actor = ``Actor.current()``), and is at once:

- the sandbox harness's ``AuditSink`` (``emit(sandbox_id, kind, fields)``): the harness emits
  the audit registry's own types (``sandbox.layer``, ``exec.start``, ...), this adds the run's
  mode and command; the first event of a sandbox opens its trail and records
  ``policy.resolved`` (digest, sources) first;
- the proxy's audit (``proxy_audit(sandbox_id)`` -> that sandbox's trail, which
  ``ProxyProcess`` serves to its unprivileged child through ``corral.audit.AuditRelay``);
- the tools' and approvals' sink (``ToolAudit``: tool.call, approval.*) for ``corral mcp``.

Invariants:
- Every emit blocks until its event is committed (``Trail.emit``), so the action it describes
  happens after its record is durable; an emit that fails raises, and the harness aborts the
  step (fail closed). ``exec.start`` is emitted before the command is started.
- A sandbox's trail is closed (``trail.close(status=...)``) when the harness reports its
  teardown; ``close`` closes whatever is still open (status ``"aborted"``) and the store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.audit.store import AuditStore, Trail

__all__ = ["LaunchAudit", "ToolAudit", "open_audit"]

def open_audit(policy: Any = None, *, mode: str = "run", command: list[str] | None = None,
               path: Any = None) -> LaunchAudit:
    """Open the store (``CorralError`` with one clear line if it cannot be written)."""
    from corral.audit.store import AuditStore  # not corral.audit: relay/summary load later

    return LaunchAudit(AuditStore.open(path), policy=policy, mode=mode, command=command)


class LaunchAudit:
    def __init__(self, store: AuditStore, *, policy: Any = None, mode: str = "run",
                 command: list[str] | None = None) -> None:
        from corral.audit.events import Actor

        self.store = store
        self.actor = Actor.current()
        self.policy = policy
        self.mode = mode
        self.command = command
        self._trails: dict[str, Trail] = {}
        self._lock = threading.Lock()
        self.status: dict[str, str] = {}  # sandbox id -> how it ended, for trail.close
        self.seen: list[str] = []  # sandbox ids in the order their trails opened

    # -- trails -------------------------------------------------------------------------------

    def trail(self, sandbox_id: str) -> Trail:
        with self._lock:
            trail = self._trails.get(sandbox_id)
            if trail is None:
                trail = self.store.trail(sandbox_id, actor=self.actor)
                if self.policy is not None:
                    trail.emit("policy.resolved", digest=self.policy.digest,
                               sources=[str(s) for s in self.policy.sources])
                self._trails[sandbox_id] = trail
                self.seen.append(sandbox_id)
            return trail

    def proxy_audit(self, sandbox_id: str) -> Trail:
        """The sink for this sandbox's proxy (served to the proxy child through the relay)."""
        return self.trail(sandbox_id)

    def close_trail(self, sandbox_id: str, status: str) -> None:
        with self._lock:
            trail = self._trails.pop(sandbox_id, None)
        if trail is not None:
            trail.close(status=status)

    def close(self, status: str = "aborted") -> None:
        """Close every trail still open (with ``status``) and the store."""
        for sid in list(self._trails):
            self.close_trail(sid, self.status.get(sid, status))
        self.store.close()

    # -- the harness's AuditSink --------------------------------------------------------------

    def emit(self, sandbox_id: str, kind: str, fields: dict[str, Any]) -> None:
        data = {k: v for k, v in fields.items() if v is not None}
        if kind == "sandbox.create":
            data.update(mode=self.mode, command=self.command)
        elif kind == "exec.start":
            data["via"] = self.mode
        elif kind == "sandbox.exit":
            self.status[sandbox_id] = f"exit {data['status']}"
        self.trail(sandbox_id).emit(kind, **{k: v for k, v in data.items() if v is not None})
        if kind == "sandbox.teardown":
            self.close_trail(sandbox_id, self.status.pop(sandbox_id, "torn down"))

    # -- Mode 1 -------------------------------------------------------------------------------

    def tool_audit(self, trail_id: str) -> ToolAudit:
        return ToolAudit(self.trail(trail_id))


class ToolAudit:
    """Tool and approval events into one trail; only fields the schema registers are passed."""

    def __init__(self, trail: Any) -> None:
        self.trail = trail

    def emit(self, event_type: str, **fields: Any) -> None:
        from corral.audit import SCHEMAS

        spec = SCHEMAS.get(event_type)
        if spec is None:
            return
        data = {k: v for k, v in fields.items() if k in spec and v is not None}
        self.trail.emit(event_type, **data)
