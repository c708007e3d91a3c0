"""Who is calling, and the tools (one shell sandbox) that belong to each caller.

Invariants:
- Over stdio there is one principal ("stdio") and so one sandbox per server process; over
  HTTP each bearer token is its own principal with its own sandbox, provisioned on its first
  call. Principals never share a sandbox, approvals held for one are not usable by another.
- A principal is named by the token's configured name, never by the token itself; tokens are
  compared in constant time and kept only as sha256 digests after start-up. (With
  ``--project`` the principal is the identity the server vouches for: corral.runtime.)
- ``close`` tears every sandbox down; it is called when the server stops.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from corral.tools.service import Tools

__all__ = ["STDIO", "Authenticator", "Principals", "TokenTable"]

STDIO = "stdio"


class Authenticator(Protocol):
    """``Authorization`` header -> principal name, or None (refused). ``TokenTable`` for
    ``--token``; with ``--project``, the server vouches for each token (it may block)."""

    def principal(self, authorization: str | None) -> str | None: ...


class TokenTable:
    """Bearer tokens -> principal names."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        # name -> sha256(token); digests compared with hmac.compare_digest
        self._digests = {
            name: hashlib.sha256(tok.encode()).digest() for name, tok in tokens.items()
        }

    def principal(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for name, want in self._digests.items():
            if hmac.compare_digest(digest, want):
                found = name
        return found


class Principals:
    """Lazily created ``Tools`` per principal."""

    def __init__(self, factory: Callable[[str], Tools]) -> None:
        self._factory = factory
        self._tools: dict[str, Tools] = {}
        self._lock = threading.Lock()

    def tools(self, principal: str) -> Tools:
        with self._lock:
            tools = self._tools.get(principal)
            if tools is None:
                tools = self._factory(principal)
                self._tools[principal] = tools
            return tools

    def close(self) -> None:
        with self._lock:
            tools, self._tools = list(self._tools.values()), {}
        for item in tools:
            item.session.close()
