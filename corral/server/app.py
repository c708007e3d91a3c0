"""The ASGI app: ``/api/v1`` routers, error handlers, body bound, schema check.

Invariants:
- The app serves only a schema it knows: on startup the database's revision must be this
  version's head (``migrate.check_schema``), else startup fails; a database unreachable at
  startup does not stop the server (replicas start before their database), and every request
  re-checks until the check has passed once (503 meanwhile).
- OpenAPI is at ``/api/v1/openapi.json``; no interactive docs are served (they would load
  assets from a CDN).
- Replicas keep no state another replica needs: everything is in the database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.server.config import ServerConfig
from corral.server.crypto import load_kek
from corral.server.db import Database
from corral.server.errors import error_response, install_handlers
from corral.server.limits import BodyLimit
from corral.server.migrate import SchemaError, check_schema

__all__ = ["create_app"]

log = logging.getLogger("corral.server")


def create_app(config: ServerConfig, *, db: Database | None = None) -> FastAPI:
    from corral.server.api import ROUTERS

    database = db or Database(config.db_url())
    # Made on first start when the config names no key file; a named one must exist.
    load_kek(config.kek_path(), create=config.kek_file is None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            check_schema(database.engine)
            app.state.schema_ok = True
        except DBAPIError as err:
            log.warning("database unreachable at start (%s); serving 503 until it is back",
                        type(err.orig).__name__)
        yield
        database.dispose()

    app = FastAPI(title="corral server", version="1", openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.db, app.state.config = database, config
    app.state.schema_ok = False
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix="/api/v1")
    from corral.server.oidc import Idp
    from corral.server.web import ROUTERS as WEB_ROUTERS

    app.state.idp = Idp(config.oidc) if config.oidc else None
    for router in WEB_ROUTERS:
        app.include_router(router)

    # A plain ASGI middleware: Starlette's @app.middleware("http") runs every request in a
    # task of its own and streams both bodies through queues (~1 ms of an ingest batch).
    def _schema_gate(inner: ASGIApp) -> ASGIApp:
        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and not app.state.schema_ok \
                    and path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
                try:
                    check_schema(database.engine, auto_migrate_empty_sqlite=False)
                    app.state.schema_ok = True
                except SchemaError as err:
                    await error_response(503, "schema_mismatch", str(err))(scope, receive, send)
                    return
                except DBAPIError:
                    await error_response(503, "database_unavailable",
                                         "the server's database is unavailable; retry later",
                                         {"Retry-After": "5"})(scope, receive, send)
                    return
            await inner(scope, receive, send)
        return gate

    app.add_middleware(_schema_gate)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, object]:
        return {"ok": True, "schema": app.state.schema_ok}

    # Outermost: the bound applies before any handler or middleware reads the body.
    app.add_middleware(BodyLimit, max_body=config.max_body)
    from corral.server.relay import RelayMiddleware

    # Outside even the bound: a relayed body streams through, whatever its size.
    app.add_middleware(RelayMiddleware, config=config, db=database)
    return app
