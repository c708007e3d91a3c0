"""A small JSON client for the server's ``/api/v1``: stdlib ``http.client`` and ``json`` only.

Invariants:
- ``http://`` is refused unless the host is loopback (a token must not cross a network in
  clear); ``https://`` verifies the server's certificate with the system's trust store.
- The token travels only in the ``Authorization`` header and never appears in an error.
- Every failure is a ``ClientError`` (a ``CorralError``: one line for the CLI): the server's
  own ``{"error": {"code", "message"}}`` when it sent one, else what went wrong on the way.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import urllib.parse
from typing import Any

from corral.errors import CorralError

__all__ = ["Client", "ClientError", "check_url"]

MAX_RESPONSE = 64 * 1024 * 1024


class ClientError(CorralError):
    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"server URL {url!r}: use https://HOST[:PORT]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ClientError("server URL: no credentials, query or fragment (the token goes in "
                          "CORRAL_TOKEN)")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ClientError(f"server URL {url!r}: http:// only on loopback; use https://")
    return parts


class Client:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.parts = check_url(url)
        self.base = self.parts.path.rstrip("/")
        self.token, self.timeout = token, timeout

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self.parts.hostname or "", self.parts.port
        if self.parts.scheme == "https":
            import ssl

            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "corral-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            conn.request(method, self.base + "/api/v1" + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE + 1)
        except (TimeoutError, OSError, http.client.HTTPException) as err:
            where = self.parts.netloc
            raise ClientError(f"cannot reach the server at {where}: "
                              f"{getattr(err, 'strerror', None) or err}") from None
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE:
            raise ClientError("the server's answer is too large")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if 200 <= resp.status < 300:
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            raise ClientError(f"server: {error.get('message')} ({resp.status})",
                              status=resp.status, code=str(error.get("code", "")))
        raise ClientError(f"server answered {resp.status} {resp.reason}", status=resp.status)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)
