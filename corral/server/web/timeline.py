"""A run's audit events as readable timeline entries (category, one-line summary, fields).

Invariants: this module only shapes data; every string it returns is agent-controlled text
that the templates escape (nothing here builds markup). An event whose JSON cannot be read
still gets an entry (its raw text), so a malformed row never hides the rest of the timeline.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["CATEGORIES", "Entry", "category", "entry", "when"]

# type prefix -> (category key, label); the order is the filter bar's order.
CATEGORIES: dict[str, str] = {
    "exec": "Exec", "request": "Requests", "credential": "Credentials", "dns": "DNS",
    "tool": "Tools", "approval": "Approvals", "limit": "Limits", "sandbox": "Sandbox",
    "other": "Other",
}
_BY_TYPE = {
    "exec.start": "exec", "proxy.allow": "request", "proxy.deny": "request",
    "proxy.inspect": "request", "credential.inject": "credential",
    "credential.scrub": "credential", "dns.query": "dns", "tool.call": "tool",
    "approval.request": "approval", "approval.decide": "approval", "approval.use": "approval",
    "approval.revoke": "approval",
    "sandbox.limit": "limit", "audit.flood": "limit", "llm.usage": "request",
}
# category -> the event types a filter on it selects (SQL ``IN``)
TYPES_OF: dict[str, list[str]] = {}
for _t, _c in _BY_TYPE.items():
    TYPES_OF.setdefault(_c, []).append(_t)


def category(type_: str) -> str:
    if type_ in _BY_TYPE:
        return _BY_TYPE[type_]
    if type_.startswith(("sandbox.", "policy.", "trail.")):
        return "sandbox"
    return "other"


def when(ts_us: int) -> str:
    return dt.datetime.fromtimestamp(ts_us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class Entry:
    seq: int
    ts: str
    type: str
    category: str
    summary: str
    decision: str  # allow | deny | "" (styles the row)
    rule: str
    fields: list[tuple[str, str]]


def _s(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value)


def _summary(type_: str, d: dict[str, Any]) -> str:
    if type_.startswith("proxy."):
        target = f"{_s(d, 'host')}{':' + _s(d, 'port') if d.get('port') else ''}"
        line = f"{_s(d, 'method') or 'CONNECT'} {target}{_s(d, 'path')}"
        return f"{line} → {_s(d, 'status')}" if d.get("status") is not None else line
    if type_ == "exec.start":
        argv = d.get("argv")
        return " ".join(map(str, argv)) if isinstance(argv, list) else _s(d, "path")
    if type_ == "dns.query":
        return f"{_s(d, 'name')} {_s(d, 'qtype')} {_s(d, 'answer') or _s(d, 'result')}".strip()
    if type_ == "credential.inject":
        return f"{_s(d, 'binding')} into {_s(d, 'host')}"
    if type_ == "tool.call":
        return f"{_s(d, 'tool')} {_s(d, 'status') or _s(d, 'result')}".strip()
    if type_.startswith("approval."):
        return f"{_s(d, 'tool')} {_s(d, 'decision') or _s(d, 'status')}".strip()
    if type_ == "sandbox.limit":
        return f"{_s(d, 'limit')} {_s(d, 'value')}".strip()
    first = [f"{k}={v}" for k, v in list(d.items())[:4]]
    return " ".join(first)


def entry(seq: int, ts_us: int, type_: str, data: str) -> Entry:
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    d: dict[str, Any] = parsed if isinstance(parsed, dict) else {"raw": data}
    decision = "deny" if type_ == "proxy.deny" else "allow" if type_ == "proxy.allow" else ""
    fields = [(k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
              for k, v in sorted(d.items())]
    return Entry(seq, when(ts_us), type_, category(type_), _summary(type_, d)[:400], decision,
                 _s(d, "rule"), fields)
