"""Request bodies: every field bounded (length, pattern, range), unknown fields refused."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AgentIn", "CredentialIn", "MemberIn", "PolicyIn", "ProjectIn", "TeamIn"]

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
