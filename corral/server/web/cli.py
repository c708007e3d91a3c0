"""``corral login``'s side of the server: the device flow (proxied) and the loopback redirect.

Invariants:
- Device flow (RFC 8628): the server asks the IdP for a device code with its own client
  credentials and gives the CLI an opaque ``handle`` (its hash keys the row holding the device
  code); only the handle's holder can poll, and a successful poll consumes the flow.
- Loopback redirect (RFC 8252): the CLI sends a ``redirect_uri`` on ``http://127.0.0.1`` or
  ``[::1]`` with a port, and an S256 ``code_challenge``; after the IdP login the browser is
  sent there with a one-time code good for 2 minutes, which ``/auth/cli/token`` redeems only
  with the matching ``code_verifier`` (a stolen code is useless without it).
- Both end in a server-issued login token (``accounts.issue_login_token``); ``step_up`` asks
  for a short-lived token that may decide approvals and widen reach.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import urllib.parse
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from corral.server.api.deps import get_session
from corral.server.crypto import load_kek
from corral.server.errors import ApiError
from corral.server.models import User
from corral.server.oidc import flows, ratelimit
from corral.server.oidc.accounts import issue_login_token, sign_in
from corral.server.oidc.idp import IdpRefused, IdpUnavailable
from corral.server.oidc.verify import TokenInvalid
from corral.server.web.login import client_address, idp_of, start_flow

__all__ = ["finish_cli", "router"]

router = APIRouter(include_in_schema=False)
CODE_TTL = dt.timedelta(minutes=2)
PENDING = ("authorization_pending", "slow_down")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(_In):
    step_up: bool = False
    name: str = Field(default="corral login", max_length=100)


class PollIn(_In):
    handle: str = Field(min_length=20, max_length=100)


class CodeIn(_In):
    code: str = Field(min_length=20, max_length=100)
    code_verifier: str = Field(min_length=43, max_length=128)


def _loopback_redirect(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    try:
        loop = ipaddress.ip_address((parts.hostname or "").strip("[]")).is_loopback
    except ValueError:
        loop = False
    if parts.scheme != "http" or not loop or parts.port is None or parts.query \
            or parts.fragment or parts.username:
        raise ApiError(400, "bad_redirect", "redirect_uri: http://127.0.0.1:PORT/PATH or "
                       "http://[::1]:PORT/PATH only (a loopback redirect, RFC 8252)")
    return uri


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


@router.get("/auth/cli")
def cli_start(request: Request, redirect_uri: str, code_challenge: str, state: str,
              step_up: bool = False, name: str = "corral login",
              code_challenge_method: Literal["S256"] = "S256",
              session: Session = Depends(get_session)) -> Response:
    if not 43 <= len(code_challenge) <= 128 or not 8 <= len(state) <= 200:
        raise ApiError(400, "bad_request", "code_challenge (S256) and state are required")
    return start_flow(request, session, "cli", {
        "redirect": _loopback_redirect(redirect_uri), "challenge": code_challenge,
        "cli_state": state, "step_up": step_up, "name": name[:100]})


def finish_cli(request: Request, session: Session, flow: dict[str, Any], user: User,
               tokens: dict[str, Any]) -> Response:
    code = flows.random_key()
    flows.put(session, "cli_code", code, {
        "user_id": user.id, "challenge": flow["challenge"], "step_up": flow["step_up"],
        "name": flow["name"], "refresh": tokens.get("refresh_token")}, ttl=CODE_TTL)
    session.commit()
    query = urllib.parse.urlencode({"code": code, "state": flow["cli_state"]})
    return RedirectResponse(f"{flow['redirect']}?{query}", status_code=303)


def _issue(request: Request, session: Session, user: User, *, name: str, step_up: bool,
           refresh: str | None) -> dict[str, Any]:
    kek = load_kek(request.app.state.config.kek_path())
    row, secret = issue_login_token(session, kek, user, name=name, step_up=step_up,
                                    refresh_token=refresh)
    session.commit()
    return {"token": secret, "id": row.id, "email": user.email, "name": user.name,
            "step_up": step_up, "expires_at": row.expires_at.isoformat(timespec="seconds")}


@router.post("/auth/cli/token")
def cli_token(request: Request, body: CodeIn,
              session: Session = Depends(get_session)) -> dict[str, Any]:
    ratelimit.count(session, "client", client_address(request))
    flow = flows.take(session, ("cli_code",), body.code)
    if flow is None:
        session.commit()
        raise ApiError(400, "invalid_grant", "this login code is unknown, used or expired")
    if not hmac.compare_digest(_s256(body.code_verifier), str(flow["challenge"])):
        session.commit()  # the code is spent: a wrong verifier does not get another try
        raise ApiError(400, "invalid_grant", "the PKCE code_verifier does not match")
    user = session.get(User, int(flow["user_id"]))
    if user is None or user.disabled:
        raise ApiError(403, "user_disabled", "this user is disabled in corral")
    return _issue(request, session, user, name=str(flow["name"]), step_up=bool(flow["step_up"]),
                  refresh=flow.get("refresh"))


@router.post("/auth/device")
def device_start(request: Request, body: DeviceIn,
                 session: Session = Depends(get_session)) -> dict[str, Any]:
    idp = idp_of(request)
    ratelimit.count(session, "client", client_address(request))
    session.commit()
    try:
        doc = idp.device_start()
    except IdpUnavailable as err:
        raise ApiError(502, "idp_unavailable", str(err)) from None
    except IdpRefused as err:
        if err.error == "device_flow_unsupported":
            raise ApiError(501, "device_flow_unsupported", "the identity provider offers no "
                           "device flow; use the loopback login") from None
        raise ApiError(502, "idp_refused", str(err)) from None
    handle = flows.random_key()
    expires = int(doc.get("expires_in", 600))
    flows.put(session, "device", handle, {"device_code": doc["device_code"],
                                          "step_up": body.step_up, "name": body.name},
              ttl=dt.timedelta(seconds=min(max(expires, 60), 1800)))
    session.commit()
    return {"handle": handle, "user_code": doc.get("user_code"),
            "verification_uri": doc.get("verification_uri"),
            "verification_uri_complete": doc.get("verification_uri_complete"),
            "interval": int(doc.get("interval", 5)), "expires_in": expires}


@router.post("/auth/device/poll")
def device_poll(request: Request, body: PollIn,
                session: Session = Depends(get_session)) -> Response:
    idp = idp_of(request)
    row = flows.peek(session, ("device",), body.handle)
    if row is None:
        raise ApiError(400, "expired_token", "this device login is unknown, used or expired")
    data = dict(row.data)
    try:
        tokens = idp.device_poll(str(data["device_code"]))
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise TokenInvalid("the identity provider returned no ID token")
        claims = idp.verify(id_token, nonce=None)
    except IdpUnavailable as err:
        raise ApiError(502, "idp_unavailable", str(err)) from None
    except IdpRefused as err:
        if err.error in PENDING:
            return JSONResponse({"status": err.error}, status_code=202)
        flows.take(session, ("device",), body.handle)
        session.commit()
        raise ApiError(400, err.error, str(err)) from None
    except TokenInvalid as err:
        flows.take(session, ("device",), body.handle)
        session.commit()
        raise ApiError(400, "invalid_id_token", str(err)) from None
    if flows.take(session, ("device",), body.handle) is None:
        raise ApiError(400, "expired_token", "this device login was already used")
    ratelimit.count(session, "user", str(claims["sub"]))
    user = sign_in(session, idp.config, claims)
    return JSONResponse(_issue(request, session, user, name=str(data["name"]),
                               step_up=bool(data["step_up"]),
                               refresh=tokens.get("refresh_token")))
