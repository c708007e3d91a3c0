"""The resolved policy as the rest of corral sees it: plain frozen dataclasses.

These types are the contract between ``corral.policy`` (which loads, validates, composes and
compiles policies) and its users (sandbox, proxy, credentials, tools). They carry no pydantic
so that the launch path and the proxy's hot path do not pay for schema machinery. ``Limits``
and ``FilesConfig`` live in ``corral.policy.settings`` (immutable named tuples, which ``corral
run`` can import without loading ``dataclasses``) and are re-exported here.

Invariants:
- Every ``Rule`` and every resolved value knows its ``Origin`` (file and line), so a decision
  or a conflict can always name where it came from.
- Host patterns are stored normalised: lowercase, no trailing dot, IDNA (punycode) form.
- A ``Decision`` with ``rule is None`` is the default deny.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.policy.settings import FilesConfig, Limits

__all__ = [
    "Action",
    "CredentialBinding",
    "Decision",
    "ExecConfig",
    "FilesConfig",
    "Limits",
    "Origin",
    "Rule",
]

Action = Literal["direct", "inspect", "deny"]
ExecMode = Literal["allow", "allowlist", "approve"]


@dataclass(frozen=True, slots=True)
class Origin:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One egress rule. ``methods``/``paths`` of ``None`` mean "any"."""

    host: str
    ports: frozenset[int]
    action: Action
    origin: Origin
    policy: str
    methods: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    credential: str | None = None
    tls_ca: Path | None = None
    allow_private: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one connection or request, and the rule that made it."""

    action: Action
    rule: Rule | None
    message: str

    @property
    def allowed(self) -> bool:
        return self.action != "deny"

    @property
    def credential(self) -> str | None:
        return self.rule.credential if self.rule is not None else None

    @property
    def origin(self) -> str:
        return str(self.rule.origin) if self.rule is not None else "default deny"


@dataclass(frozen=True, slots=True)
class CredentialBinding:
    """How a host-side secret is injected. ``secret`` is a source spec, never the value.

    ``kind == "aws"`` bindings use the ``aws_*`` sources and re-sign SigV4 instead of setting
    ``header``.
    """

    name: str
    origin: Origin
    kind: Literal["header", "aws"] = "header"
    secret: str | None = None
    header: str = "Authorization"
    format: str = "Bearer {secret}"
    env: str | None = None
    plaintext: bool = False
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    trusted_source: bool = False  # the defining policy lives in the config dir


@dataclass(frozen=True, slots=True)
class ExecConfig:
    mode: ExecMode = "approve"
    allow: tuple[str, ...] = field(default_factory=tuple)
