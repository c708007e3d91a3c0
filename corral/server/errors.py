"""Every error the API returns is ``{"error": {"code", "message"}}`` with the right status.

Invariants: no traceback or exception text from a library reaches a client (an unexpected
exception is a 500 ``internal`` with a generic message, logged server-side); a database that
cannot be reached is a 503 ``database_unavailable``; a schema the server does not know is a
503 ``schema_mismatch``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "error_response", "install_handlers"]

log = logging.getLogger("corral.server")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def _is_unreachable(err: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(err, OperationalError | InterfaceError) or err.connection_invalidated


def install_handlers(app: FastAPI) -> None:
    from corral.server.migrate import SchemaError

    @app.exception_handler(ApiError)
    async def _api(_: Request, err: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return error_response(err.status, err.code, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}"
                    for e in err.errors()[:5]]
        return error_response(422, "invalid", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(err.status_code, "error")
        message = err.detail if isinstance(err.detail, str) else code
        return error_response(err.status_code, code, message)

    @app.exception_handler(SchemaError)
    async def _schema(_: Request, err: SchemaError) -> JSONResponse:
        return error_response(503, "schema_mismatch", str(err))

    @app.exception_handler(DBAPIError)
    async def _db(_: Request, err: DBAPIError) -> JSONResponse:
        from sqlalchemy.exc import IntegrityError

        if isinstance(err, IntegrityError):  # a concurrent create won the race
            return error_response(409, "conflict", "that already exists")
        if _is_unreachable(err):
            log.warning("database unavailable: %s", type(err.orig).__name__)
            return error_response(503, "database_unavailable",
                                  "the server's database is unavailable; retry later",
                                  {"Retry-After": "5"})
        log.exception("database error")
        return error_response(500, "internal", "internal error")

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(DisconnectionError)
    async def _pool(_: Request, err: Exception) -> JSONResponse:
        return error_response(503, "database_unavailable",
                              "the server's database is unavailable; retry later",
                              {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _any(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error")
