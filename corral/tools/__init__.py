"""Sandboxed tools for Mode 1 (exec, read, write, edit, glob, grep, fetch) and approvals."""

from __future__ import annotations

__all__: list[str] = []
