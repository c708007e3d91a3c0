"""The server's configuration: a YAML file validated with pydantic, errors as ``file:line``.

Invariants:
- Unknown keys are errors (a typo must not silently fall back to a default).
- The database URL comes from the file's ``db`` or from ``CORRAL_DB_URL``, never from the
  command line (a password there would show in ``ps``); neither set means SQLite at
  ``$CORRAL_HOME/server.db``.
- ``oidc`` configures SSO (``corral.server.oidc``); an ``http://`` issuer is refused unless
  it is on a loopback address (a local IdP, tests).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral import dirs
from corral.errors import UserInputError
from corral.policy.yamlsrc import format_loc, parse_yaml

__all__ = ["ConfigError", "OidcConfig", "RelayConfig", "ServerConfig", "load_config"]

DEFAULT_LISTEN = "127.0.0.1:8470"


class ConfigError(UserInputError):
    """A bad server config file; the message is ``file:line: field: problem``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OidcConfig(_Strict):
    issuer: str = Field(pattern=r"^https?://\S+$")
    client_id: str = Field(min_length=1)
    client_secret_file: Path | None = None
    groups_claim: str = "groups"
    # IdP group -> {team: role}; a group absent here makes its holder a member of the team
    # of the same name, if there is one.
    group_map: dict[str, dict[str, str]] = Field(default_factory=dict)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        # A token-signing authority reached in clear only where no network is crossed.
        parts = urllib.parse.urlsplit(value)
        if parts.scheme == "http" and not _loopback(parts.hostname or ""):
            raise ValueError(f"issuer {value!r}: http:// only on a loopback address; "
                             "use https://")
        return value.rstrip("/")

    @field_validator("group_map")
    @classmethod
    def _roles(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for group, teams in value.items():
            for team, role in teams.items():
                if role not in ("owner", "admin", "member", "viewer"):
                    raise ValueError(f"group_map.{group}.{team}: unknown role {role!r}")
        return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RelayConfig(_Strict):
    allow_private: list[str] = Field(default_factory=list)

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad range
        return value


class ServerConfig(_Strict):
    listen: str = Field(default=DEFAULT_LISTEN, pattern=r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$")
    db: str | None = None
    kek_file: Path | None = None
    oidc: OidcConfig | None = None
    relay: RelayConfig = Field(default_factory=RelayConfig)
    prices_file: Path | None = None
    max_body: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # The URL users reach this server at (behind a load balancer or TLS proxy); the IdP's
    # redirect URI is <public_url>/auth/callback. Default: http://<listen>.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+/?$")

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    def db_url(self) -> str:
        url = self.db or os.environ.get("CORRAL_DB_URL")
        if url:
            return url
        return f"sqlite:///{dirs.state_dir() / 'server.db'}"

    def kek_path(self) -> Path:
        return self.kek_file or dirs.state_dir() / "server.kek"

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def load_config(path: str | Path | None) -> ServerConfig:
    """The config at ``path`` (``None``: all defaults); ``ConfigError`` names file:line."""
    if path is None:
        return ServerConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot read: {err}") from None
    try:
        data, lines = parse_yaml(text)
    except ValueError as err:
        line, where, message = str(err).split("|", 2)
        raise ConfigError(f"{source}:{line}: {where or '(document)'}: {message}") from None
    if data is None:
        return ServerConfig()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: (document): the server config is a mapping")
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            loc = tuple(p for p in item["loc"] if isinstance(p, str | int))
            lineno = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines),
                          1)
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(f"{source}:{lineno}: {format_loc(loc)}: {message}")
        raise ConfigError("; ".join(problems)) from None
