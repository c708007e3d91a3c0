"""ID token attacks against the verifier, with the real provider's JWKS: crafted tokens
(attack inputs only) for another audience, expired, from the future, signed by an unknown
key, alg none, HMAC with the public key, issuer mismatch, wrong nonce; plus a property test
over generated claim sets; and key rotation at the real provider (unknown kid -> refetch)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import RSAKey

from corral.server.config import OidcConfig
from corral.server.oidc import Idp, TokenInvalid
from corral.server.oidc.verify import SKEW, check_claims
from tests.server.sso.conftest import Provider, SsoServer
from tests.server.sso.test_stepup import cli_login


def _idp(provider: Provider) -> Idp:
    return Idp(OidcConfig(issuer=provider.issuer, client_id="corral",
                          client_secret_file=provider.secret_file))


def _their_key(provider: Provider) -> RSAKey:
    jwk = json.loads(Path(provider.conf["keys_file"]).read_text())["keys"][0]
    return RSAKey.import_key(jwk)


def _claims(provider: Provider, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": provider.issuer, "aud": "corral", "sub": "alice", "iat": now,
            "exp": now + 300, "nonce": "n0nce"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def _sign(claims: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = None) -> str:
    header = {"alg": alg, "kid": kid if kid is not None else getattr(key, "kid", None)}
    return jwt.encode({k: v for k, v in header.items() if v}, claims, key,
                      algorithms=[alg])


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_signed_with_the_issuers_key_and_right_claims_verifies(idp: Provider) -> None:
    # Control for the attacks below: only the one changed part makes them fail.
    key = _their_key(idp)
    claims = _idp(idp).verify(_sign(_claims(idp), key), nonce="n0nce")
    assert claims["sub"] == "alice"


# Times are offsets from the moment the test runs (a value computed at collection goes stale
# in a long suite: "the future" of collection time is the past fifteen minutes later).
NOW = object()


@pytest.mark.parametrize(("change", "why"), [
    ({"aud": "another-client"}, "another audience"),
    ({"exp": (NOW, -SKEW - 5)}, "expired"),
    ({"iat": (NOW, SKEW + 60)}, "future"),
    ({"iss": "http://127.0.0.1:1"}, "issuer"),
    ({"nonce": "other"}, "nonce"),
    ({"sub": None}, "subject"),
    ({"aud": ["corral", "other"], "azp": "other"}, "azp"),
])
def test_crafted_claims_are_refused(idp: Provider, change: dict[str, Any], why: str) -> None:
    change = {k: int(time.time()) + v[1] if isinstance(v, tuple) and v[0] is NOW else v
              for k, v in change.items()}
    token = _sign(_claims(idp, **change), _their_key(idp))
    with pytest.raises(TokenInvalid, match=why):
        _idp(idp).verify(token, nonce="n0nce")


def test_a_token_signed_by_an_unknown_key_is_refused(idp: Provider) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    with pytest.raises(TokenInvalid, match="does not publish"):
        _idp(idp).verify(_sign(_claims(idp), stranger), nonce="n0nce")
    # Same kid as the issuer's key, other key material: the signature check refuses it.
    forged = RSAKey.generate_key(2048, parameters={"kid": _their_key(idp).kid})
    with pytest.raises(TokenInvalid, match="signature"):
        _idp(idp).verify(_sign(_claims(idp), forged), nonce="n0nce")


def test_alg_none_and_hmac_with_the_public_key_are_refused(idp: Provider) -> None:
    kid = _their_key(idp).kid
    unsigned = f"{_b64({'alg': 'none', 'kid': kid})}.{_b64(_claims(idp))}."
    with pytest.raises(TokenInvalid, match="algorithm 'none'"):
        _idp(idp).verify(unsigned, nonce="n0nce")
    # Key confusion: HMAC keyed with the issuer's public key (which anyone can fetch).
    public_pem = _their_key(idp).as_pem(private=False)
    signing_input = f"{_b64({'alg': 'HS256', 'kid': kid})}.{_b64(_claims(idp))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(TokenInvalid, match="HS256"):
        _idp(idp).verify(confused, nonce="n0nce")


_TEXT = st.text(min_size=0, max_size=30)


@settings(max_examples=300, deadline=None)
@given(iss=_TEXT, aud=st.one_of(_TEXT, st.lists(_TEXT, max_size=3)), nonce=_TEXT,
       exp=st.integers(-10**6, 10**6), iat=st.integers(-10**6, 10**6))
def test_claims_pass_only_when_every_check_holds(iss: str, aud: Any, nonce: str, exp: int,
                                                 iat: int) -> None:
    """Over generated claim sets: accepted exactly when iss, aud, nonce and times are right."""
    now = 1_700_000_000.0
    claims = {"iss": iss, "aud": aud, "sub": "s", "nonce": nonce, "exp": int(now) + exp,
              "iat": int(now) + iat}
    auds = [aud] if isinstance(aud, str) else aud
    ok = (iss == "https://idp.example" and "corral" in auds and len(auds) == 1
          and nonce == "n" and exp + SKEW > 0 and iat - SKEW <= 0)
    try:
        check_claims(claims, issuer="https://idp.example", client_id="corral", nonce="n",
                     now=now)
        accepted = True
    except TokenInvalid:
        accepted = False
    assert accepted == ok


def test_the_provider_rotates_its_key_and_logins_go_on(sso_server: SsoServer,
                                                       idp: Provider) -> None:
    first = cli_login(sso_server, "alice")  # the server now holds the JWKS with the old key
    idp.stop()
    Path(idp.conf["keys_file"]).unlink()
    idp.start()  # a new signing key, a new kid
    second = cli_login(sso_server, "alice")
    assert second["email"] == first["email"] == "alice@example.com"


def test_a_wrong_nonce_in_a_real_login_is_refused(sso_server: SsoServer) -> None:
    """The provider's own ID token, for a flow whose stored nonce is not the one sent."""
    import httpx
    from sqlalchemy import select

    from corral.server.models import LoginFlow
    from tests.server.sso.conftest import idp_login

    with httpx.Client(timeout=30) as client:
        back = idp_login(client, sso_server.url + "/login", "alice",
                         sso_server.url + "/auth/callback")
        db = sso_server.db()
        with db.session() as s:
            row = s.scalars(select(LoginFlow).where(LoginFlow.kind == "web")).one()
            row.data = {**row.data, "nonce": "not-the-one-sent"}
            s.commit()
        db.dispose()
        resp = client.get(back, follow_redirects=False)
        assert resp.status_code == 400 and "nonce" in resp.text


def test_a_wrong_pkce_verifier_at_the_idp_is_refused(sso_server: SsoServer) -> None:
    import httpx
    from sqlalchemy import select

    from corral.server.models import LoginFlow
    from tests.server.sso.conftest import idp_login

    with httpx.Client(timeout=30) as client:
        back = idp_login(client, sso_server.url + "/login", "alice",
                         sso_server.url + "/auth/callback")
        db = sso_server.db()
        with db.session() as s:
            row = s.scalars(select(LoginFlow).where(LoginFlow.kind == "web")).one()
            row.data = {**row.data, "verifier": "x" * 43}
            s.commit()
        db.dispose()
        resp = client.get(back, follow_redirects=False)
        assert resp.status_code == 400 and "refused" in resp.text
