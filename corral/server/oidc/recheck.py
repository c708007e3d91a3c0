"""Asking the IdP again about a login token's user: the "token refresh" of an SSO login.

Invariants: a login token that holds an IdP refresh token is rechecked at most every
``RECHECK_EVERY``: the server refreshes with the IdP and re-reads the groups from the new ID
token (memberships follow at once). An IdP that refuses the refresh (the user is gone or
disabled there, the grant revoked) revokes the corral token on the spot; an IdP that cannot
be reached changes nothing (existing logins keep working until they expire).
- Fail closed: a token whose user is gone, whose sealed refresh token no longer opens (a
  rotated-away key, a damaged value), or whose refresh answers with an ID token for another
  subject is revoked like a refused one. Only a login that never held a refresh token (an IdP
  that grants none) is left to its expiry, as it cannot be asked about.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import NoReturn

from fastapi import Request
from sqlalchemy.orm import Session

from corral.server.admin_log import record
from corral.server.crypto import load_kek
from corral.server.models import Token, User, utcnow
from corral.server.oidc.accounts import open_refresh, seal_refresh, sync_groups
from corral.server.oidc.idp import Idp, IdpRefused, IdpUnavailable
from corral.server.oidc.verify import TokenInvalid
from corral.server.tokens import TokenRefused

__all__ = ["RECHECK_EVERY", "recheck"]

RECHECK_EVERY = dt.timedelta(minutes=15)
log = logging.getLogger("corral.server.sso")


def recheck(request: Request, session: Session, token: Token) -> None:
    idp = getattr(request.app.state, "idp", None)
    now = utcnow()
    if not isinstance(idp, Idp) or token.user_id is None or (
            token.idp_checked_at is not None and now - token.idp_checked_at < RECHECK_EVERY):
        return
    user = session.get(User, token.user_id)
    if user is None:
        _revoke(session, token, now, "-", "its user no longer exists")
    if not token.idp_refresh:
        return  # nothing to ask the IdP with: the login lives to its expiry
    kek = load_kek(request.app.state.config.kek_path())
    refresh = open_refresh(kek, token)
    if refresh is None:
        _revoke(session, token, now, user.email, "its IdP refresh token no longer opens")
    try:
        answer = idp.refresh(refresh)
        raw = answer.get("id_token")
        claims = idp.verify(raw, nonce=None) if isinstance(raw, str) else None
    except IdpUnavailable as err:
        log.warning("cannot recheck token %s with the IdP: %s", token.id, err)
        return
    except (IdpRefused, TokenInvalid) as err:
        _revoke(session, token, now, user.email,
                f"the identity provider no longer vouches for {user.email} ({err})")
    if claims is not None:
        if claims.get("sub") != user.idp_subject:
            _revoke(session, token, now, user.email,
                    "the identity provider answered the refresh for another subject")
        sync_groups(session, idp.config, user, claims)
    if isinstance(answer.get("refresh_token"), str):
        token.idp_refresh = seal_refresh(kek, user, answer["refresh_token"])
    token.idp_checked_at = now
    session.commit()


def _revoke(session: Session, token: Token, now: dt.datetime, actor: str, why: str) -> NoReturn:
    token.revoked_at = now
    record(session, actor, "token.idp_revoked", f"token:{token.id}", reason=why)
    session.commit()
    raise TokenRefused(f"token {token.id} was revoked: {why}; run 'corral login' again", token)
