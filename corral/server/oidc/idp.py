"""The server's side of the IdP conversation (authlib's OAuth 2 client over httpx).

Invariants:
- Discovery is read from ``<issuer>/.well-known/openid-configuration`` and its ``issuer``
  must equal the configured one (no mix-up); it and the JWKS are cached per process and
  refetched when stale; an unknown ``kid`` refetches the JWKS at most once per
  ``JWKS_MIN_REFETCH`` (a stream of forged kids cannot make us hammer the IdP).
- Every exchange is authorization code *with* a PKCE verifier, the device grant, or a refresh;
  the client secret is read from its file at start and sent only to the token endpoint.
- An IdP that cannot be reached is ``IdpUnavailable`` (a clear 502 to the user, nothing else
  breaks); one that answers with an OAuth error is ``IdpRefused`` carrying its error code.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from joserfc.jwk import KeySet

from corral.errors import CorralError
from corral.server.config import OidcConfig
from corral.server.oidc.verify import verify_id_token

__all__ = ["DEVICE_GRANT", "Idp", "IdpRefused", "IdpUnavailable"]

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CACHE_FOR = 3600.0
JWKS_MIN_REFETCH = 10.0
TIMEOUT = 10.0


class IdpUnavailable(CorralError):
    """The IdP could not be reached or answered nonsense."""


class IdpRefused(CorralError):
    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"the identity provider refused: {error}"
                         + (f" ({description})" if description else ""))
        self.error = error


class Idp:
    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self.issuer = config.issuer
        self.secret = (config.client_secret_file.read_text().strip()
                       if config.client_secret_file else None)
        self._lock = threading.Lock()
        self._meta: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, KeySet] | None = None
        self._refetched = -JWKS_MIN_REFETCH

    def _get(self, url: str) -> dict[str, Any]:
        try:
            resp = httpx.get(url, timeout=TIMEOUT, follow_redirects=False)
            resp.raise_for_status()
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            raise IdpUnavailable(f"the identity provider at {self.issuer} cannot be reached "
                                 f"({type(err).__name__}: {err})") from None
        if not isinstance(doc, dict):
            raise IdpUnavailable(f"the identity provider's {url} is not a JSON object")
        return doc

    def metadata(self, fresh: bool = False) -> dict[str, Any]:
        """Discovery; ``fresh`` asks the IdP now (a login checks it is up before sending a
        browser there, so an outage is a clear error page of ours)."""
        with self._lock:
            if not fresh and self._meta and time.monotonic() - self._meta[0] < CACHE_FOR:
                return self._meta[1]
        doc = self._get(self.issuer + "/.well-known/openid-configuration")
        if doc.get("issuer") != self.issuer:
            raise IdpUnavailable(f"the identity provider's discovery names issuer "
                                 f"{doc.get('issuer')!r}, not {self.issuer!r}")
        with self._lock:
            self._meta = (time.monotonic(), doc)
        return doc

    def keys(self, refetch: bool) -> KeySet:
        with self._lock:
            cached = self._jwks
            now = time.monotonic()
            if refetch:
                # At most one forced refetch per JWKS_MIN_REFETCH, however many kids arrive.
                if cached and now - self._refetched < JWKS_MIN_REFETCH:
                    return cached[1]
                self._refetched = now
            elif cached and now - cached[0] < CACHE_FOR:
                return cached[1]
        doc = self._get(str(self.metadata()["jwks_uri"]))
        try:
            keyset = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except Exception as err:  # joserfc raises several kinds on a bad set
            raise IdpUnavailable(f"the identity provider's JWKS is unusable: {err}") from None
        with self._lock:
            self._jwks = (time.monotonic(), keyset)
        return keyset

    def supports_device_flow(self) -> bool:
        return bool(self.metadata().get("device_authorization_endpoint"))

    def _client(self, **kw: Any) -> OAuth2Client:
        return OAuth2Client(self.config.client_id, self.secret, timeout=TIMEOUT,
                            token_endpoint_auth_method="client_secret_basic"
                            if self.secret else "none", **kw)

    def authorize_url(self, *, redirect_uri: str, state: str, nonce: str, verifier: str) -> str:
        with self._client(redirect_uri=redirect_uri, scope=" ".join(self.config.scopes),
                          code_challenge_method="S256") as client:
            url, _ = client.create_authorization_url(
                str(self.metadata(fresh=True)["authorization_endpoint"]), state=state,
                nonce=nonce,
                code_verifier=verifier)
        return str(url)

    def _token(self, client: OAuth2Client, **params: Any) -> dict[str, Any]:
        try:
            token = client.fetch_token(str(self.metadata()["token_endpoint"]), **params)
        except OAuthError as err:
            raise IdpRefused(err.error or "error", err.description or "") from None
        except (httpx.HTTPError, ValueError) as err:
            raise IdpUnavailable(f"the identity provider's token endpoint failed "
                                 f"({type(err).__name__}: {err})") from None
        return dict(token)

    def exchange_code(self, *, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        with self._client(redirect_uri=redirect_uri) as client:
            return self._token(client, grant_type="authorization_code", code=code,
                               code_verifier=verifier)

    def device_start(self) -> dict[str, Any]:
        endpoint = self.metadata().get("device_authorization_endpoint")
        if not endpoint:
            raise IdpRefused("device_flow_unsupported")
        auth = (self.config.client_id, self.secret) if self.secret else None
        data = {"scope": " ".join(self.config.scopes)}
        if not self.secret:
            data["client_id"] = self.config.client_id
        try:
            resp = httpx.post(str(endpoint), data=data, auth=auth, timeout=TIMEOUT)
            doc = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            raise IdpUnavailable(f"the identity provider's device endpoint failed "
                                 f"({type(err).__name__})") from None
        if resp.status_code != 200 or "device_code" not in doc:
            raise IdpRefused(str(doc.get("error", resp.status_code)),
                             str(doc.get("error_description", "")))
        return dict(doc)

    def device_poll(self, device_code: str) -> dict[str, Any]:
        with self._client() as client:
            return self._token(client, grant_type=DEVICE_GRANT, device_code=device_code)

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        with self._client() as client:
            return self._token(client, grant_type="refresh_token", refresh_token=refresh_token)

    def verify(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        return verify_id_token(id_token, issuer=self.issuer, client_id=self.config.client_id,
                               keys=self.keys, nonce=nonce)
