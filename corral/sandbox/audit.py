"""The launcher's audit hook: every lifecycle step is exactly one ``AuditSink.emit`` call.

The default sink does nothing; the CLI wires the audit store in. A sink that raises aborts the
step that called it (audit before action: an event that cannot be recorded stops the run).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["AuditSink", "NullSink"]


class AuditSink(Protocol):
    def emit(self, sandbox_id: str, kind: str, fields: dict[str, Any]) -> None: ...


class NullSink:
    def emit(self, sandbox_id: str, kind: str, fields: dict[str, Any]) -> None:
        return None
