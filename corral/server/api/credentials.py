"""Project credentials: set a value (sealed at once), list names. No route returns a value."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from sqlalchemy import select

from corral.server.admin_log import record
from corral.server.api import resolve
from corral.server.api.deps import Access, require
from corral.server.api.schemas import CredentialIn
from corral.server.authz import Permission
from corral.server.crypto import load_kek
from corral.server.models import Credential, utcnow

__all__ = ["router"]

router = APIRouter(tags=["credentials"])
CredName = Path(pattern=r"^[a-z0-9][a-z0-9-]{0,99}$")


@router.get("/projects/{project}/credentials")
def list_credentials(access: Access = require(Permission.CREDENTIAL_READ, resolve.project)
                     ) -> dict[str, Any]:
    rows = access.session.scalars(select(Credential).where(
        Credential.project_id == access.resource.id).order_by(Credential.name))
    return {"credentials": [{"name": c.name, "release": c.release, "updated_by": c.updated_by,
                             "updated_at": c.updated_at.isoformat()} for c in rows]}


@router.put("/projects/{project}/credentials/{name}")
def set_credential(request: Request, body: CredentialIn, name: str = CredName,
                   access: Access = require(Permission.CREDENTIAL_WRITE, resolve.project)
                   ) -> dict[str, Any]:
    # Read on every use, not cached: after 'corral server kek rotate' replaced the file,
    # sealing with the old key would leave rows that only the retired key opens.
    kek = load_kek(request.app.state.config.kek_path())
    session, project = access.session, access.resource
    sealed = kek.seal(project.id, name, body.value.encode())
    row = session.scalar(select(Credential).where(Credential.project_id == project.id,
                                                  Credential.name == name))
    created = row is None
    if row is None:
        row = Credential(project_id=project.id, name=name, ciphertext=b"", nonce=b"",
                         wrapped_key=b"", key_nonce=b"", kek_id="", updated_by="")
        session.add(row)
    row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce, row.kek_id = sealed
    row.release, row.updated_by, row.updated_at = body.release, access.principal.actor, utcnow()
    record(session, access.principal.actor, "credential.set", f"{project.name}/{name}",
           team_id=project.team_id, release=body.release, created=created)
    session.commit()
    return {"name": name, "project": project.name, "release": body.release}
