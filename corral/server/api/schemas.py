"""Request bodies: every field bounded (length, pattern, range), unknown fields refused."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AgentIn", "ApprovalIn", "BatchIn", "CredentialIn", "DecisionIn", "EndIn", "EventIn",
           "IntrospectIn", "KillIn", "MemberIn", "PolicyIn", "ProjectIn", "RunIn", "TeamIn"]

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")]
RoleName = Literal["owner", "admin", "member", "viewer"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamIn(_In):
    name: Name


class MemberIn(_In):
    role: RoleName


class ProjectIn(_In):
    name: Name
    require_server: bool = False
    max_offline_s: int = Field(default=24 * 3600, ge=0, le=365 * 24 * 3600)


class AgentIn(_In):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,49}(/[a-z0-9][a-z0-9._-]{0,49})?$")]


class PolicyIn(_In):
    filename: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")]
    text: Annotated[str, Field(max_length=1024 * 1024)]


class CredentialIn(_In):
    value: Annotated[str, Field(min_length=1, max_length=64 * 1024)]
    release: bool = False


Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Text500 = Annotated[str, Field(min_length=1, max_length=500)]


class RunIn(_In):
    host: Annotated[str, Field(min_length=1, max_length=255)]
    sandbox: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    policy_digest: Hex64
    human: Annotated[str, Field(pattern=r"^[^\s]{1,320}$")] | None = None
    agent: Annotated[str, Field(max_length=101)] | None = None
    command: Annotated[list[Annotated[str, Field(max_length=4096)]],
                       Field(max_length=256)] = Field(default_factory=list)


class EndIn(_In):
    exit_status: Annotated[int, Field(ge=-255, le=255)] | None = None
    reason: Text500 | None = None


class KillIn(_In):
    reason: Text500 | None = None


class EventIn(_In):
    seq: Annotated[int, Field(ge=1, le=2**62)]
    ts: Annotated[int, Field(ge=0, le=2**62)]
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
    actor: Annotated[str, Field(min_length=2, max_length=4096)]
    data: Annotated[str, Field(min_length=2, max_length=256 * 1024)]
    v: Annotated[int, Field(ge=1, le=1000)]
    prev: Hex64
    hash: Hex64


class BatchIn(_In):
    events: Annotated[list[EventIn], Field(min_length=1, max_length=500)]


class ApprovalIn(_In):
    tool: Annotated[str, Field(min_length=1, max_length=200)]
    args: dict[str, object] = Field(default_factory=dict)
    rule: Text500 | None = None
    caller: Annotated[str, Field(min_length=1, max_length=320)] | None = None

    @model_validator(mode="after")
    def _storable(self) -> ApprovalIn:
        # JSON may escape a lone surrogate ("\ud800"); it has no UTF-8 form, so neither the
        # scope digest nor the database could take it: refused here, not a 500 later.
        try:
            json.dumps([self.tool, self.args, self.rule, self.caller],
                       ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("text with a lone UTF-16 surrogate (e.g. \\ud800) has no "
                             "UTF-8 form") from None
        return self


class DecisionIn(_In):
    reason: Text500 | None = None
    always: bool = False  # approve: also approve later identical calls (a standing approval)


class IntrospectIn(_In):
    token: Annotated[str, Field(min_length=1, max_length=200)]

