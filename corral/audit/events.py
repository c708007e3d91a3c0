"""Audit event types, their payload schemas, the actor, and the canonical form that is hashed.

Invariants kept here:

- Every event type is registered in ``SCHEMAS``; an emit with an unknown type, an unknown
  field, a missing required field or a value of the wrong type is refused (``EventError``)
  before it reaches the store. There is deliberately no free-form field: ``credential.inject``
  carries the binding *name* and has no slot a secret value could be put in.
- The hashed form of an event is its canonical JSON: keys sorted, no whitespace, ASCII only,
  no NaN. ``event_body`` builds that exact string from the stored columns by formatting
  (``data`` and ``actor`` are stored already canonical; sandbox ids and types are restricted to
  characters JSON never escapes), which is what makes ``verify`` fast. A test checks the
  formatted body equals ``json.dumps(event, sort_keys=True, separators=(",", ":"))``.
- ``hash = sha256(body)`` where the body includes ``prev`` (the previous hash of the chain, or
  ``GENESIS`` for the first event), so editing, deleting, inserting or reordering breaks a link.
"""

# No ``from __future__ import annotations`` here: a NamedTuple compiles each string annotation
# into a ForwardRef when its class is made, ~0.1 ms a field on every corral run.

import enum
import json
import os
import pwd
import re
from collections.abc import Mapping
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring_ascii,
)
from typing import Any, NamedTuple

from corral._digest import sha256  # not hashlib: see corral._digest

__all__ = [
    "GENESIS",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "Actor",
    "EventError",
    "EventType",
    "canonical_json",
    "check_sandbox_id",
    "event_body",
    "event_hash",
    "validate",
]

SCHEMA_VERSION = 1
GENESIS = "0" * 64
_SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class EventError(ValueError):
    """An event that does not match its registered schema (a programming error in the caller)."""


class EventType(enum.StrEnum):
    SANDBOX_CREATE = "sandbox.create"
    SANDBOX_LAYER = "sandbox.layer"
    SANDBOX_LIMIT = "sandbox.limit"
    SANDBOX_EXIT = "sandbox.exit"
    SANDBOX_TEARDOWN = "sandbox.teardown"
    SANDBOX_KILL = "sandbox.kill"  # corral sandbox kill: a user ended a live sandbox
    POLICY_RESOLVED = "policy.resolved"
    EXEC_START = "exec.start"
    DNS_QUERY = "dns.query"
    PROXY_ALLOW = "proxy.allow"
    PROXY_DENY = "proxy.deny"
    PROXY_INSPECT = "proxy.inspect"
    CREDENTIAL_INJECT = "credential.inject"
    CREDENTIAL_SCRUB = "credential.scrub"  # a secret replaced in a response (count, never value)
    LLM_USAGE = "llm.usage"  # one metered LLM request settled (corral.spend)
    TOOL_CALL = "tool.call"
    APPROVAL_REQUEST = "approval.request"
    APPROVAL_DECIDE = "approval.decide"
    APPROVAL_USE = "approval.use"  # a standing approval consumed by a call
    APPROVAL_REVOKE = "approval.revoke"  # a standing approval ("always") ended by a human
    ERROR = "error"
    AUDIT_FLOOD = "audit.flood"  # a sandbox past its audit budget (corral.audit.budget)
    TRAIL_CLOSE = "trail.close"  # written by Trail.close(); the chain's last event


# Field spec: name -> (accepted types, required). ``list`` means a list of str, ``dict`` a JSON
# object of scalars. bool is checked before int (bool is an int subclass in Python).
_Spec = dict[str, tuple[tuple[type, ...], bool]]
_S, _I, _B, _L, _D = (str,), (int,), (bool,), (list,), (dict,)
_NUM = (int, float)

_PROXY: _Spec = {
    "host": (_S, True),
    "rule": (_S, True),  # origin "file:line" of the deciding rule, or "default deny"
    "port": (_I, False),
    "method": (_S, False),
    "path": (_S, False),
    "status": (_I, False),
    "bytes_in": (_I, False),
    "bytes_out": (_I, False),
    "duration_ms": (_NUM, False),
    "reason": (_S, False),
    "mode": (_S, False),  # direct | inspect | transparent | connect
    "client": (_S, False),
    "count": (_I, False),  # this event stands for ``count`` identical ones (audit.budget)
    "protocol": (_S, False),  # an Upgrade request's protocol (websocket, or what was refused)
}

SCHEMAS: dict[str, _Spec] = {
    EventType.SANDBOX_CREATE: {
        "uid": (_I, False),
        "gid": (_I, False),
        "command": (_L, False),
        "workspace": (_S, False),
        "mode": (_S, False),  # run | mcp
        "policies": (_L, False),
    },
    # One event per isolation layer applied (network, workspace, home, tmp, limits, ...).
    EventType.SANDBOX_LAYER: {
        "layer": (_S, True),
        "ok": (_B, False),
        "detail": (_S, False),
        "path": (_S, False),
        "ephemeral": (_B, False),
        "owner": (_I, False),
        "proxy_port": (_I, False),
        "dns_port": (_I, False),
        "memory": (_I, False),
        "pids": (_I, False),
        "cpu": (_NUM, False),
        "wall": (_NUM, False),  # seconds; absent = none
        "idle": (_NUM, False),
    },
    EventType.SANDBOX_LIMIT: {"limit": (_S, True), "value": (_S, False), "detail": (_S, False),
                              "count": (_I, False)},
    EventType.SANDBOX_EXIT: {
        "status": (_I, True),
        "signal": (_I, False),
        "reason": (_S, False),  # e.g. "wall timeout", "idle timeout", "memory"
        "timeout": (_S, False),  # wall | idle
        "duration_ms": (_NUM, False),
    },
    EventType.SANDBOX_TEARDOWN: {
        "ok": (_B, True),
        "detail": (_S, False),
        "leftovers": (_L, False),
        "errors": (_L, False),
    },
    EventType.SANDBOX_KILL: {"by": (_S, False), "processes": (_I, False)},
    EventType.POLICY_RESOLVED: {"digest": (_S, True), "sources": (_L, True)},
    EventType.EXEC_START: {
        "argv": (_L, True),
        "cwd": (_S, False),
        "pid": (_I, False),
        "via": (_S, False),  # run | tool
        "tty": (_B, False),
    },
    EventType.DNS_QUERY: {
        "name": (_S, True),
        "rcode": (_S, True),
        "qtype": (_S, False),
        "answer": (_S, False),
        "count": (_I, False),
    },
    EventType.PROXY_ALLOW: _PROXY,
    EventType.PROXY_DENY: _PROXY,
    EventType.PROXY_INSPECT: _PROXY,
    EventType.CREDENTIAL_INJECT: {
        "binding": (_S, True),
        "host": (_S, True),
        "header": (_S, False),
        "rule": (_S, False),
        "count": (_I, False),
    },
    EventType.CREDENTIAL_SCRUB: {
        "binding": (_S, True),
        "host": (_S, True),
        "count": (_I, True),
        "where": (_S, True),
    },
    EventType.LLM_USAGE: {
        "host": (_S, True),
        "rule": (_S, True),
        "api": (_S, True),  # anthropic.messages | openai.chat | openai.responses
        "model": (_S, True),
        "input_tokens": (_I, True),
        "output_tokens": (_I, True),
        "cache_write_tokens": (_I, True),
        "cache_read_tokens": (_I, True),
        "cost_usd": (_NUM, True),  # what was charged against the budgets
        "reserved_usd": (_NUM, False),
        "complete": (_B, True),  # the provider's final usage was read
        "flagged": (_B, False),  # charged the whole reservation: usage never arrived
        "known_model": (_B, False),  # False: priced as the provider's dearest model
        "status": (_I, False),
        "request_id": (_S, False),  # the provider's
        "path": (_S, False),
    },
    EventType.TOOL_CALL: {
        "tool": (_S, True),
        "args": (_D, False),
        "ok": (_B, False),
        "duration_ms": (_NUM, False),
        "principal": (_S, False),
        "detail": (_S, False),
    },
    EventType.APPROVAL_REQUEST: {
        "request_id": (_S, True),
        "tool": (_S, False),
        "summary": (_S, False),
        "reason": (_S, False),
        "args_digest": (_S, False),
        "policy_digest": (_S, False),
    },
    EventType.APPROVAL_DECIDE: {
        "request_id": (_S, True),
        "decision": (_S, True),  # approved | denied | expired
        "by": (_S, False),
        "tool": (_S, False),
        "reason": (_S, False),
        "always": (_B, False),
    },
    EventType.APPROVAL_USE: {"request_id": (_S, True), "tool": (_S, False)},
    EventType.APPROVAL_REVOKE: {"standing": (_I, True), "by": (_S, True), "tool": (_S, False),
                                "summary": (_S, False), "workspace": (_S, False)},
    EventType.ERROR: {"component": (_S, True), "message": (_S, True), "count": (_I, False)},
    EventType.AUDIT_FLOOD: {
        "reason": (_S, True),  # rate | bytes | end
        "detail": (_S, False),
        "events": (_I, False),  # events written for the sandbox so far
        "bytes": (_I, False),
        "refused": (_I, False),
        "summarised": (_I, False),
    },
    EventType.TRAIL_CLOSE: {"status": (_S, True)},
}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if not isinstance(value, types):
        return False
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
            for k, v in value.items()
        )
    return True


# Exact scalar types per field and the required names, precomputed: validation runs on every
# emit, on the caller's thread, so the common case is a dict lookup and a set membership test.
_SCALAR = {str, int, float, bool}
_FAST: dict[str, tuple[dict[str, frozenset[type]], tuple[str, ...]]] = {
    t: (
        {k: frozenset(x for x in types if x in _SCALAR) for k, (types, _) in spec.items()},
        tuple(k for k, (_, req) in spec.items() if req),
    )
    for t, spec in SCHEMAS.items()
}


def validate(type_: str, data: Mapping[str, Any]) -> None:
    """Refuse an event that does not match the registry."""
    fast = _FAST.get(type_)
    if fast is None:
        raise EventError(f"unknown audit event type {type_!r}")
    fields, required = fast
    spec = SCHEMAS[type_]
    for key, value in data.items():
        exact = fields.get(key)
        if exact is None:
            raise EventError(f"{type_}: unknown field {key!r} (allowed: {', '.join(spec)})")
        if type(value) in exact or value is None:
            continue
        if not _type_ok(value, spec[key][0]):
            want = "/".join(t.__name__ for t in spec[key][0])
            raise EventError(f"{type_}: field {key!r} must be {want}, got {type(value).__name__}")
    for key in required:
        if data.get(key) is None:
            raise EventError(f"{type_}: missing required field {key!r}")


def check_sandbox_id(sandbox_id: str) -> str:
    if not isinstance(sandbox_id, str) or not _SANDBOX_ID.fullmatch(sandbox_id):
        raise EventError(f"invalid sandbox id {sandbox_id!r} (letters, digits, . _ : -; max 128)")
    return sandbox_id


# One encoder object: json.dumps with non-default options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


# Its C encoder made once as well: ``encode`` makes one per call (a third of a small event's
# cost, paid on the audit relay's thread for every event). Same options, same output, but no
# circular-reference markers (a shared markers dict keeps stale ids after an error): what is
# encoded is a validated payload or parsed JSON, which cannot hold a cycle.
_C_ENCODE = (
    c_make_encoder(None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", True, False,
                   False)
    if c_make_encoder is not None else None
)


def canonical_json(value: Any) -> str:
    if _C_ENCODE is None or type(value) is not dict:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def event_body(
    *, actor: str, data: str, prev: str, sandbox: str, seq: int, ts: int, type_: str, v: int
) -> str:
    """Canonical JSON of an event from its stored columns (``actor``/``data`` already canonical)."""
    return (
        f'{{"actor":{actor},"data":{data},"prev":"{prev}","sandbox":"{sandbox}",'
        f'"seq":{seq},"ts":{ts},"type":"{type_}","v":{v}}}'
    )


def event_hash(body: str) -> str:
    return sha256(body.encode()).hexdigest()


class Actor(NamedTuple):
    """The human behind a sandbox: OS user, the sudo caller, the login uid, later an identity.

    A named tuple, not a dataclass: the launcher records it on every ``corral run``, which
    does not load ``dataclasses`` (~10 ms)."""

    user: str
    uid: int
    sudo_user: str | None = None
    sudo_uid: int | None = None
    login_uid: int | None = None
    identity: str | None = None  # a signed-in identity, when corral gains one

    @classmethod
    def current(cls, identity: str | None = None) -> "Actor":
        uid = os.getuid()
        sudo_user: str | None = None
        sudo_uid: int | None = None
        # SUDO_* are only meaningful when sudo made us root; for anyone else they are just
        # environment variables the caller could set.
        if uid == 0 and os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
            sudo_uid = int(os.environ["SUDO_UID"])
            sudo_user = os.environ.get("SUDO_USER") or _user_name(sudo_uid)
        return cls(_user_name(uid), uid, sudo_user, sudo_uid, _login_uid(), identity)

    def to_json(self) -> str:
        return canonical_json(self._asdict())

    @classmethod
    def from_json(cls, text: str) -> "Actor":
        return cls(**json.loads(text))

    def describe(self) -> str:
        who = self.identity or self.user
        if self.sudo_user:
            who += f" (sudo by {self.sudo_user})"
        return who


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _login_uid() -> int | None:
    try:
        with open("/proc/self/loginuid") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if value == 0xFFFFFFFF else value
