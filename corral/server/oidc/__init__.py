"""SSO for ``corral server``: the IdP client, ID token checks, pending logins, accounts.

Public surface: ``Idp`` (discovery, JWKS, code/device/refresh exchanges), ``verify_id_token``
and ``TokenInvalid``. The routes that use them live in ``corral.server.web``.
"""

from __future__ import annotations

from corral.server.oidc.idp import Idp, IdpRefused, IdpUnavailable
from corral.server.oidc.verify import TokenInvalid, verify_id_token

__all__ = ["Idp", "IdpRefused", "IdpUnavailable", "TokenInvalid", "verify_id_token"]
