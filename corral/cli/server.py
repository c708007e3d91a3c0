"""Run and administer corral server: serve, migrate, token create|list|revoke, kek rotate.

Invariants: ``token`` and ``kek`` and ``migrate`` act on the database directly and are
root-only (they hold the keys to everything); ``token create`` prints the token alone on
stdout, once. The database URL comes from ``--config`` or ``CORRAL_DB_URL``, never a flag.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from corral.cli import checks
from corral.cli.remote import JSON_OPT, show
from corral.errors import CorralError, UserInputError
from corral.render import no_color

if TYPE_CHECKING:
    from corral.server.config import ServerConfig
    from corral.server.db import Database

__all__ = ["app"]

app = typer.Typer(no_args_is_help=False, add_completion=False, invoke_without_command=True)
token_app = typer.Typer(no_args_is_help=True, add_completion=False)
kek_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(token_app, name="token", help="Service tokens (local, root-only).")
app.add_typer(kek_app, name="kek", help="The key-encryption key of stored credentials.")

CONFIG = typer.Option(None, "--config", help="server config file (YAML)")


def _config(path: Path | None) -> ServerConfig:
    from corral.server.config import load_config

    return load_config(path)


def _db(config: ServerConfig) -> Database:
    from corral.server.db import Database

    return Database(config.db_url())


def _root() -> None:
    if os.geteuid() != 0:
        raise CorralError("this reads the server's database directly: run it as root on the "
                          "server host (try sudo)")


def _ttl(text: str) -> dt.timedelta:
    match = re.fullmatch(r"(\d{1,6})([mhd])", text)
    if not match:
        raise UserInputError(f"--ttl {text!r}: a duration like 30m, 12h or 90d")
    amount, unit = int(match[1]), match[2]
    unit_name = {"m": "minutes", "h": "hours", "d": "days"}[unit]
    ttl = dt.timedelta(**{unit_name: amount})
    if not dt.timedelta(minutes=1) <= ttl <= dt.timedelta(days=3650):
        raise UserInputError("--ttl: between 1m and 3650d")
    return ttl


@app.callback()
def serve(ctx: typer.Context,
          listen: str | None = typer.Option(None, "--listen", callback=checks.listen,
                                            help="HOST:PORT (default "
                                            "127.0.0.1:8470)"),
          config: Path | None = CONFIG,
          oidc_issuer: str | None = typer.Option(None, "--oidc-issuer", callback=checks.server_url,
                                                 help="SSO: the OpenID provider's issuer URL"),
          oidc_client_id: str | None = typer.Option(None, "--oidc-client-id",
                                                    callback=checks.client_id,
                                                    help="SSO: this server's client id"),
          oidc_client_secret_file: Path | None = typer.Option(
              None, "--oidc-client-secret-file", exists=True, dir_okay=False,
              help="SSO: a file holding the client secret")) -> None:
    """Serve the control plane (the API under /api/v1, SSO login at /login)."""
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn
    from sqlalchemy.exc import DBAPIError

    from corral.server.app import create_app
    from corral.server.http_protocol import HttpProtocol
    from corral.server.migrate import check_schema

    cfg = _config(config)
    if listen is not None:
        cfg = cfg.model_validate({**cfg.model_dump(exclude_unset=True), "listen": listen})
    if oidc_issuer or oidc_client_id or oidc_client_secret_file:
        cfg = _with_oidc(cfg, oidc_issuer, oidc_client_id, oidc_client_secret_file)
    db = _db(cfg)
    try:
        check_schema(db.engine)  # refuse a schema this corral does not know, before serving
    except DBAPIError:
        print("corral server: database unreachable; serving 503 until it is back")
    host, port = cfg.host_port()
    app = create_app(cfg, db=db)
    # What startup built (modules, the app, the ORM's mappers: ~200k objects) lives as long
    # as the process; left to the cyclic GC, every full collection walked it all again, ~3 ms
    # of each audit ingest batch. Frozen, collections walk only what requests allocate.
    import gc

    gc.collect()
    gc.freeze()
    # HttpProtocol: uvicorn's llhttp protocol, each loop step's writes sent as one (a relayed
    # answer's head and body reach the launcher in one segment)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                proxy_headers=False, http=HttpProtocol, use_colors=False if no_color() else None)


def _with_oidc(cfg: ServerConfig, issuer: str | None, client_id: str | None,
               secret_file: Path | None) -> ServerConfig:
    """The config with the --oidc-* flags laid over its ``oidc`` section."""
    from pydantic import ValidationError

    oidc = cfg.oidc.model_dump(exclude_unset=True) if cfg.oidc else {}
    given = {"issuer": issuer, "client_id": client_id, "client_secret_file": secret_file}
    oidc.update({k: v for k, v in given.items() if v is not None})
    try:
        return cfg.model_validate({**cfg.model_dump(exclude_unset=True), "oidc": oidc})
    except ValidationError as err:
        problems = "; ".join(f"--oidc-{'-'.join(str(p) for p in e['loc'][1:]).replace('_', '-')}"
                             f": {str(e['msg']).removeprefix('Value error, ')}"
                             for e in err.errors())
        raise UserInputError(problems) from None


@app.command("migrate")
def migrate(ctx: typer.Context, config: Path | None = CONFIG) -> None:
    """Apply the database migrations this corral ships."""
    from corral.server.migrate import upgrade

    _root()
    db = _db(_config(config or ctx.obj))
    before, after = upgrade(db.engine)
    print(f"schema at {after}" + (f" (was {before})" if before != after else " (up to date)"))


@token_app.command("create")
def token_create(ctx: typer.Context,
                 name: str = typer.Option(..., "--name", help="what the token is for",
                                          callback=checks.resource_name),
                 role: str = typer.Option(..., "--role", help="owner, admin, member or viewer",
                                          callback=checks.role),
                 team: str | None = typer.Option(None, "--team", help="only this team "
                                                 "(default: the whole org)",
                                                 callback=checks.resource_name),
                 ttl: str = typer.Option("90d", "--ttl", help="lifetime, e.g. 12h or 90d",
                                         callback=checks.duration),
                 config: Path | None = CONFIG) -> None:
    """Create a service token; prints the token alone, once."""
    from corral.server.local import create_token

    if role not in ("owner", "admin", "member", "viewer"):
        raise UserInputError(f"--role {role!r}: owner, admin, member or viewer")
    _root()
    db = _db(_config(config or ctx.obj))
    _check_schema(db)
    print(create_token(db, name=name, role=role, team=team, ttl=_ttl(ttl)))


@token_app.command("list")
def token_list(ctx: typer.Context, config: Path | None = CONFIG,
               as_json: bool = JSON_OPT) -> None:
    """Service and user tokens (never their secrets)."""
    from corral.server.local import list_tokens

    _root()
    db = _db(_config(config or ctx.obj))
    _check_schema(db)
    rows = list_tokens(db)
    show(rows, ["id", "name", "kind", "role", "team", "state", "expires_at", "last_used_at"],
         as_json, {"tokens": rows})


@token_app.command("revoke")
def token_revoke(ctx: typer.Context, token_id: int = typer.Argument(..., min=1),
                 config: Path | None = CONFIG) -> None:
    """Revoke a token at once."""
    from corral.server.local import revoke_token

    _root()
    db = _db(_config(config or ctx.obj))
    _check_schema(db)
    if not revoke_token(db, token_id):
        raise CorralError(f"no token {token_id}")
    print(f"revoked token {token_id}")


@kek_app.command("rotate")
def kek_rotate(ctx: typer.Context,
               new_key_file: Path = typer.Option(..., "--new-key-file",
                                                 help="32 random bytes, base64",
                                                 exists=True, dir_okay=False),
               config: Path | None = CONFIG) -> None:
    """Rewrap every credential's data key under a new KEK, which then replaces the old."""
    from corral.server.local import rotate_kek

    _root()
    cfg = _config(config or ctx.obj)
    db = _db(cfg)
    _check_schema(db)
    count = rotate_kek(db, cfg, new_key_file)
    print(f"rewrapped {count} credential(s)")


def _check_schema(db: Database) -> None:
    from corral.server.migrate import check_schema

    check_schema(db.engine)
