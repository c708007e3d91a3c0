"""The policy file schema (pydantic). Only ``load`` imports this: the launch path and the proxy
use the compiled ``ResolvedPolicy`` and never pay for pydantic.

Invariants:
- Every model forbids unknown keys and is strict (no "443" -> 443 coercion): a typo is an
  error, never a silently ignored setting.
- Field validators raise ``ValueError`` whose text is a one-line hint; ``load`` prefixes file,
  line and field. Cross-field rules (``methods`` on ``direct`` ...) are checked in ``load``
  so their errors point at the offending field's own line.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.policy.hosts import normalize_pattern
from corral.policy.paths import validate_glob
from corral.policy.units import parse_duration, parse_size

__all__ = ["BudgetModel", "CredentialModel", "EgressRule", "ExecModel", "FilesModel", "LimitsModel",
           "PolicyModel"]

_METHOD_WORDS = "GET HEAD POST PUT PATCH DELETE OPTIONS TRACE CONNECT PROPFIND PROPPATCH MKCOL \
COPY MOVE LOCK UNLOCK REPORT SEARCH QUERY"
METHODS = frozenset(_METHOD_WORDS.split())
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EgressRule(_Strict):
    host: str
    ports: list[int] | None = None
    action: Literal["direct", "inspect", "platform", "deny"]
    methods: list[str] | None = None
    paths: list[str] | None = None
    credential: str | None = None
    tls_ca: str | None = None
    allow_private: bool = False
    reason: str | None = None
    meter: Literal["anthropic", "openai"] | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_pattern(value)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one port, or leave 'ports' out for [80, 443]")
            for port in value:
                if not 1 <= port <= 65535:
                    raise ValueError(f"port {port} is outside 1-65535")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one method, or leave 'methods' out for any")
            for method in value:
                if method not in METHODS:
                    hint = " (methods are upper case)" if method.upper() in METHODS else ""
                    raise ValueError(f"unknown HTTP method {method!r}{hint}")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one path glob, or leave 'paths' out for any")
            for glob in value:
                validate_glob(glob)
        return value


class CredentialModel(_Strict):
    type: Literal["header", "aws"] = "header"
    secret: str | None = None
    header: str | None = None
    format: str | None = None
    env: str | None = None
    plaintext: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER.fullmatch(value):
            raise ValueError("not a valid HTTP header name, e.g. 'Authorization'")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is not None and "{secret}" not in value:
            raise ValueError("the format must contain '{secret}', e.g. 'Bearer {secret}'")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV.fullmatch(value):
            raise ValueError("not a valid environment variable name, e.g. 'GH_TOKEN'")
        return value


class ExecModel(_Strict):
    mode: Literal["allow", "allowlist", "approve"] | None = None
    allow: list[str] = Field(default_factory=list)


class FilesModel(_Strict):
    approval: Literal["none", "writes", "all"] | None = None
    workspace: str | None = None
    home: str | None = None
    read: list[str] = Field(default_factory=list)
    hide: list[str] = Field(default_factory=list)


class LimitsModel(_Strict):
    memory: int | str | None = None
    pids: int | str | None = None
    cpu: int | float | str | None = None
    wall: int | str | None = None
    idle: int | str | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_size(value)
        return value

    @field_validator("wall", "idle")
    @classmethod
    def _time(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("pids")
    @classmethod
    def _pids(cls, value: int | str | None) -> int | str | None:
        if (isinstance(value, str) and value != "none") or (isinstance(value, int) and value < 1):
            raise ValueError("pids is a positive whole number or 'none'")
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: float | str | None) -> float | str | None:
        bad_text = isinstance(value, str) and value != "none"
        if bad_text or (not isinstance(value, str) and value is not None and value <= 0):
            raise ValueError("cpu is a positive number of CPUs (e.g. 2 or 0.5) or 'none'")
        return value


class BudgetModel(_Strict):
    amount: int | float
    period: Literal["run", "day", "week", "month"]

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: float) -> float:
        # A budget of 0 is allowed (it refuses every metered request); a million dollars is
        # far above any agent's budget and keeps micro-dollar arithmetic exact.
        if isinstance(value, bool) or not 0 <= value <= 1_000_000 or value != value:
            raise ValueError("amount is US dollars between 0 and 1000000, e.g. 5 or 0.5")
        return value


class PolicyModel(_Strict):
    name: str
    description: str = ""
    egress: list[EgressRule] = Field(default_factory=list)
    credentials: dict[str, CredentialModel] = Field(default_factory=dict)
    exec: ExecModel | None = None
    files: FilesModel | None = None
    limits: LimitsModel | None = None
    budgets: list[BudgetModel] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("use lower-case letters, digits and '-', starting with a letter/digit")
        return value
