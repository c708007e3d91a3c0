"""Asking the IdP again about a login token's user: the "token refresh" of an SSO login.

Invariants: a login token that holds an IdP refresh token is rechecked at most every
``RECHECK_EVERY``: the server refreshes with the IdP and re-reads the groups from the new ID
token (memberships follow at once). An IdP that refuses the refresh (the user is gone or
disabled there, the grant revoked) revokes the corral token on the spot; an IdP that cannot
be reached changes nothing (existing logins keep working until they expire).
"""

from __future__ import annotations

import datetime as dt
import logging

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
    kek = load_kek(request.app.state.config.kek_path())
    refresh = open_refresh(kek, token)
    if user is None or refresh is None:
        return
    try:
        answer = idp.refresh(refresh)
        raw = answer.get("id_token")
        claims = idp.verify(raw, nonce=None) if isinstance(raw, str) else None
    except IdpUnavailable as err:
        log.warning("cannot recheck token %s with the IdP: %s", token.id, err)
        return
    except (IdpRefused, TokenInvalid) as err:
        token.revoked_at = now
        record(session, user.email, "token.idp_revoked", f"token:{token.id}", reason=str(err))
        session.commit()
        raise TokenRefused(f"token {token.id} was revoked: the identity provider no longer "
                           f"vouches for {user.email} ({err}); run 'corral login' again",
                           token) from None
    if claims is not None and claims.get("sub") == user.idp_subject:
        sync_groups(session, idp.config, user, claims)
    if isinstance(answer.get("refresh_token"), str):
        token.idp_refresh = seal_refresh(kek, user, answer["refresh_token"])
    token.idp_checked_at = now
    session.commit()
