"""The tools' and approvals' audit sink: ``corral.runtime.audit.ToolAudit`` (kept under its
old name for the MCP server and ``corral approvals``)."""

from __future__ import annotations

from corral.runtime.audit import ToolAudit as TrailAudit

__all__ = ["TrailAudit"]
