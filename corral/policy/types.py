"""The resolved policy as the rest of corral sees it: immutable named tuples.

These types are the contract between ``corral.policy`` (which loads, validates, composes and
compiles policies) and its users (sandbox, proxy, credentials, tools). They carry no pydantic
so that the launch path and the proxy's hot path do not pay for schema machinery, and they are
``typing.NamedTuple`` records, not dataclasses: ``corral run -p`` loads them (unpickling the
cached policy) on every launch, and ``dataclasses`` (which imports ``inspect``, ``ast``, ``dis``
and ``tokenize``) plus the generated methods of five slotted dataclasses cost that path ~20 ms.
``Limits`` and ``FilesConfig`` live in ``corral.policy.settings`` and are re-exported here.

Being tuples, two records of different types with equal values compare (and hash) equal, and a
record is iterable and JSON-serialises as a list: never mix record types in one set or dict
key space, and serialise them through ``_asdict()`` (``ResolvedPolicy.canonical``). Derive a
changed copy with ``_replace``.

Invariants:
- Every ``Rule`` and every resolved value knows its ``Origin`` (file and line), so a decision
  or a conflict can always name where it came from.
- Host patterns are stored normalised: lowercase, no trailing dot, IDNA (punycode) form.
- A ``Decision`` with ``rule is None`` is the default deny.
"""

# No ``from __future__ import annotations`` here: a NamedTuple compiles each string annotation
# into a ForwardRef when its class is made, ~0.1 ms a field on every corral run.

from pathlib import Path
from typing import Literal, NamedTuple

from corral.policy.settings import FilesConfig, Limits

__all__ = [
    "Action",
    "BudgetEntry",
    "CredentialBinding",
    "Decision",
    "ExecConfig",
    "FilesConfig",
    "Limits",
    "Origin",
    "Rule",
]

Action = Literal["direct", "inspect", "platform", "deny"]
ExecMode = Literal["allow", "allowlist", "approve"]


class Origin(NamedTuple):
    file: str
    line: int

    def __str__(self) -> str:
        return self.file if self.line == 0 else f"{self.file}:{self.line}"  # 0: a flag


class Rule(NamedTuple):
    """One egress rule. ``methods``/``paths`` of ``None`` mean "any"."""

    host: str
    ports: frozenset[int]
    action: Action
    origin: Origin
    policy: str
    methods: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    credential: str | None = None
    # A PEM file, or the PEM text itself (how a server's policy gives it: no host paths).
    tls_ca: Path | str | None = None
    allow_private: bool = False
    reason: str | None = None
    meter: Literal["anthropic", "openai"] | None = None  # the API whose spend this rule meters


class BudgetEntry(NamedTuple):
    """One ``budgets:`` entry: at most ``amount`` US dollars of metered spend per ``period``
    (run, day, week, month on the UTC calendar)."""

    amount: float
    period: Literal["run", "day", "week", "month"]
    origin: Origin
    policy: str


class Decision(NamedTuple):
    """The outcome for one connection or request, and the rule that made it."""

    action: Action
    rule: Rule | None
    message: str
    status: int = 403  # what the proxy answers a deny with: 400 for a request it cannot read

    @property
    def allowed(self) -> bool:
        return self.action != "deny"

    @property
    def credential(self) -> str | None:
        return self.rule.credential if self.rule is not None else None

    @property
    def origin(self) -> str:
        return str(self.rule.origin) if self.rule is not None else "default deny"


class CredentialBinding(NamedTuple):
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


class ExecConfig(NamedTuple):
    mode: ExecMode = "approve"
    allow: tuple[str, ...] = ()
