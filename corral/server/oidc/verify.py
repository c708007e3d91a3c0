"""ID token verification: signature against the issuer's JWKS, then the claims.

Invariants:
- Only asymmetric signatures are accepted (``ALGORITHMS``): ``alg: none`` and the HMAC
  family (whose key would be the client secret, or a public key misused as one) never verify.
- The key is the issuer's key with the token's ``kid``; an unknown ``kid`` makes the caller
  refetch the JWKS once (the IdP rotated) before the token is refused.
- ``iss`` equals the configured issuer exactly; ``aud`` contains our client id (and, when it
  names several audiences, ``azp`` is ours); ``exp``, ``iat`` and ``sub`` are present; time
  checks allow ``SKEW`` seconds of clock difference and no more; ``nonce``, when the flow sent
  one, equals it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from corral.errors import CorralError

__all__ = ["ALGORITHMS", "SKEW", "TokenInvalid", "verify_id_token"]

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
SKEW = 60  # seconds of clock difference tolerated between the IdP and us


class TokenInvalid(CorralError):
    """The IdP's answer did not prove who the user is; the message says which check failed."""


def _header(raw: str) -> dict[str, Any]:
    try:
        return dict(extract_compact(raw.encode()).protected)
    except (JoseError, ValueError, TypeError) as err:
        raise TokenInvalid(f"the ID token is malformed ({type(err).__name__})") from None


def verify_id_token(raw: str, *, issuer: str, client_id: str,
                    keys: Callable[[bool], KeySet], nonce: str | None,
                    now: float | None = None) -> dict[str, Any]:
    """The verified claims of ``raw``; ``keys(refetch)`` gives the issuer's JWKS."""
    header = _header(raw)
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise TokenInvalid(f"the ID token's algorithm {alg!r} is not accepted "
                           f"(only {', '.join(ALGORITHMS)})")
    keyset = keys(False)
    if not _has(keyset, kid):
        keyset = keys(True)  # the IdP may have rotated its keys since we fetched them
        if not _has(keyset, kid):
            raise TokenInvalid(f"the ID token is signed by a key the issuer does not publish "
                               f"(kid {kid!r})")
    try:
        token = jwt.decode(raw, keyset, algorithms=[str(alg)])
    except JoseError as err:
        raise TokenInvalid(f"the ID token's signature does not verify ({err.error})") from None
    return check_claims(dict(token.claims), issuer=issuer, client_id=client_id, nonce=nonce,
                        now=time.time() if now is None else now)


def _has(keyset: KeySet, kid: object) -> bool:
    if kid is None:
        return len(keyset.keys) == 1  # an IdP with one key may leave kid out
    return any(k.kid == kid for k in keyset.keys)


def check_claims(claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str | None,
                 now: float) -> dict[str, Any]:
    if claims.get("iss") != issuer:
        raise TokenInvalid(f"the ID token's issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in auds:
        raise TokenInvalid(f"the ID token is for another audience ({aud!r}), not {client_id!r}")
    if len(auds) > 1 and claims.get("azp") != client_id:
        raise TokenInvalid("the ID token names several audiences and its azp is not us")
    for name in ("exp", "iat"):
        if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
            raise TokenInvalid(f"the ID token has no valid {name}")
    if claims["exp"] + SKEW <= now:
        raise TokenInvalid("the ID token has expired")
    if claims["iat"] - SKEW > now:
        raise TokenInvalid("the ID token is issued in the future (clock skew beyond "
                           f"{SKEW} s)")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenInvalid("the ID token names no subject")
    if nonce is not None and claims.get("nonce") != nonce:
        raise TokenInvalid("the ID token's nonce is not the one this login sent")
    return claims
