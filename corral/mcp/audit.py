"""The tools' and approvals' audit events into ``corral.audit``: one trail per server process.

Invariants:
- ``emit`` returns only after the event is committed (``Trail.emit``), so a tool call or an
  approval decision is on record before it takes effect; if the store fails, ``emit`` raises
  and the call fails (fail closed).
- Only fields the audit schema registers are passed (``corral.audit.SCHEMAS``); fields the
  schema does not know yet are dropped here rather than refused there. The approvals store
  keeps the full record (who, when, why, arguments) in any case.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrailAudit"]


class TrailAudit:
    def __init__(self, trail: Any) -> None:
        self.trail = trail

    def emit(self, event_type: str, **fields: Any) -> None:
        from corral.audit import SCHEMAS

        if event_type == "approval.use" and event_type not in SCHEMAS:
            event_type = "approval.decide"  # an older schema: record the use as an outcome
            fields = {**fields, "decision": "used"}
        spec = SCHEMAS.get(event_type)
        if spec is None:
            return
        data = {k: v for k, v in fields.items() if k in spec and v is not None}
        self.trail.emit(event_type, **data)
