"""The browser login: ``/login`` -> the IdP -> ``/auth/callback`` -> a new web session.

Invariants:
- ``/login`` makes a flow (state, nonce, PKCE verifier, ``next``) as a row keyed by the state
  and binds it to this browser with a cookie scoped to ``/auth/callback``; the callback takes
  the flow once (a replayed callback finds nothing), checks the binding cookie, the RFC 9207
  ``iss`` parameter when sent, exchanges the code with the verifier and verifies the ID token
  (signature, iss, aud, exp, nonce) before anything is trusted.
- ``next`` is a path on this server only (``safe_next``): never a scheme, host, ``//`` or
  backslash, so the login cannot be used as an open redirect.
- The same callback serves the CLI's loopback login (RFC 8252, ``corral.server.web.cli``):
  there it hands a one-time code to the CLI's loopback address instead of a session.
- An unreachable IdP is a clear 502 page; it touches no existing session.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from corral.server.api.deps import get_session
from corral.server.errors import ApiError
from corral.server.oidc import flows, ratelimit
from corral.server.oidc.accounts import sign_in
from corral.server.oidc.idp import Idp, IdpRefused, IdpUnavailable
from corral.server.oidc.verify import TokenInvalid
from corral.server.web import pages
from corral.server.web import session as websession

__all__ = ["client_address", "idp_of", "router", "safe_next", "start_flow"]

router = APIRouter(include_in_schema=False)
BIND_COOKIE = "corral_login"
CALLBACK = "/auth/callback"


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this server, else ``/``."""
    if not value or len(value) > 2000 or "\\" in value \
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/"
    return value


def idp_of(request: Request) -> Idp:
    idp = getattr(request.app.state, "idp", None)
    if idp is None:
        raise ApiError(404, "sso_not_configured", "this server has no SSO configured "
                       "(oidc in the server config, or --oidc-issuer)")
    assert isinstance(idp, Idp)
    return idp


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def start_flow(request: Request, session: Session, kind: str, extra: dict[str, Any]) -> Response:
    """Count the attempt, make the flow, and send the browser to the IdP."""
    idp = idp_of(request)
    ratelimit.count(session, "client", client_address(request))
    session.commit()  # the attempt counts even if the IdP is unreachable
    state, nonce, verifier, binding = (flows.random_key() for _ in range(4))
    redirect_uri = request.app.state.config.base_url() + CALLBACK
    try:
        url = idp.authorize_url(redirect_uri=redirect_uri, state=state, nonce=nonce,
                                verifier=verifier)
    except IdpUnavailable as err:
        return pages.message(request, 502, "Sign-in is unavailable", str(err))
    flows.put(session, kind, state, {"nonce": nonce, "verifier": verifier,
                                     "binding": flows.digest(binding), **extra})
    session.commit()
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(BIND_COOKIE, binding, max_age=int(flows.FLOW_TTL.total_seconds()),
                        path=CALLBACK, httponly=True, samesite="lax",
                        secure=websession.secure(request.app.state.config))
    return response


@router.get("/login")
def login(request: Request, next: str | None = None,
          session: Session = Depends(get_session)) -> Response:
    return start_flow(request, session, "web", {"next": safe_next(next)})


def _claims(request: Request, flow: dict[str, Any],
            code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    idp = idp_of(request)
    tokens = idp.exchange_code(code=code, verifier=str(flow["verifier"]),
                               redirect_uri=request.app.state.config.base_url() + CALLBACK)
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise TokenInvalid("the identity provider returned no ID token")
    return idp.verify(id_token, nonce=str(flow["nonce"])), tokens


@router.get(CALLBACK)
def callback(request: Request, state: str = "", code: str = "", iss: str | None = None,
             error: str | None = None, session: Session = Depends(get_session)) -> Response:
    from corral.server.web.cli import finish_cli

    flow = flows.take(session, ("web", "cli"), state) if state else None
    if flow is None:
        return pages.message(request, 400, "Sign-in failed",
                             "this login is unknown, already used or expired; start again")
    session.commit()  # consumed, whatever happens next: a code is never tried twice
    binding = request.cookies.get(BIND_COOKIE, "")
    if flow.get("binding") != hashlib.sha256(binding.encode()).hexdigest():
        return pages.message(request, 400, "Sign-in failed",
                             "this login was started in another browser; start again")
    if error:
        return pages.message(request, 403, "Sign-in refused",
                             f"the identity provider said: {error[:200]}")
    if iss is not None and iss != idp_of(request).issuer:
        return pages.message(request, 400, "Sign-in failed",
                             "the answer came from another identity provider")
    try:
        claims, tokens = _claims(request, flow, code)
    except IdpUnavailable as err:
        return pages.message(request, 502, "Sign-in is unavailable", str(err))
    except (IdpRefused, TokenInvalid) as err:
        return pages.message(request, 400, "Sign-in failed", str(err))
    ratelimit.count(session, "user", str(claims["sub"]))
    user = sign_in(session, idp_of(request).config, claims)
    if flow["kind"] == "cli":
        return finish_cli(request, session, flow, user, tokens)
    response = RedirectResponse(safe_next(str(flow.get("next", "/"))), status_code=303)
    websession.start(request, response, session, user)
    response.delete_cookie(BIND_COOKIE, path=CALLBACK)
    session.commit()
    return response


@router.post("/logout")
async def logout(request: Request, session: Session = Depends(get_session)) -> Response:
    current = websession.current(request, session)
    form = await request.form()
    if current is None:
        return RedirectResponse("/login", status_code=303)
    given = form.get("csrf")
    if not websession.csrf_ok(current, given if isinstance(given, str) else None):
        return pages.message(request, 403, "Refused",
                             "this form did not come from this server (CSRF token missing or "
                             "wrong)")
    response = pages.message(request, 200, "Signed out", "your session has ended")
    websession.end(request, response, current)
    session.commit()
    return response
