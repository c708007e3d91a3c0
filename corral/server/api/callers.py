"""Who is this token? Asked by ``corral mcp --http --project P`` about each bearer token its
callers present, so that every MCP caller is a known user of P's team.

Invariants:
- The asker authenticates with its own token and needs ``RUN_START`` on the project (the
  launcher's token, as when it registers a run); the answer is about that project only.
- A presented token is a caller only if it is live (``tokens.find``: not revoked, expired or
  of a disabled user; a login token still known to the IdP), is a user or service token (a
  sandbox token is never a caller), and may itself start runs in the project. Otherwise the
  answer is a 403 ``caller_refused`` saying why, recorded as ``auth.refused``; the secret is
  never echoed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from corral.server.admin_log import record_now
from corral.server.api import resolve
from corral.server.api.deps import Access, get_db, principal_for, require
from corral.server.api.schemas import IntrospectIn
from corral.server.authz import Permission, decide
from corral.server.errors import ApiError
from corral.server.tokens import TokenRefused, find

__all__ = ["router"]

router = APIRouter(tags=["runs"])


@router.post("/projects/{project}/callers")
def introspect(body: IntrospectIn, request: Request,
               access: Access = require(Permission.RUN_START, resolve.project)
               ) -> dict[str, Any]:
    session, project = access.session, access.resource
    token = None
    try:
        token = find(session, body.token.strip())
        if token.kind == "sandbox":
            raise TokenRefused("a sandbox token is not an MCP caller", token)
        if token.kind == "user" and token.idp_refresh:
            from corral.server.oidc.recheck import recheck

            recheck(request, session, token)
        caller = principal_for(session, token)
        decide(caller, Permission.RUN_START, team_id=project.team_id)
    except (TokenRefused, ApiError) as err:
        reason = str(err) if isinstance(err, TokenRefused) else \
            f"this token may not run in project {project.name}"
        session.rollback()
        record_now(get_db(request), access.principal.actor, "auth.refused",
                   f"mcp caller of {project.name}", reason=reason,
                   token_id=token.id if token is not None else None)
        raise ApiError(403, "caller_refused", reason) from None
    return {"actor": caller.actor, "kind": caller.kind, "subject": caller.subject,
            "email": caller.email, "token_id": token.id,
            "expires_at": token.expires_at.isoformat()}
