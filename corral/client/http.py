"""A small JSON client for the server's ``/api/v1``: ``json`` over ``corral.client.wire`` (a
socket, responses read by llhttp; not ``http.client``, whose ``email`` imports would cost every
``corral run --project`` 7-13 ms).

Invariants:
- ``http://`` is refused unless the host is loopback (a token must not cross a network in
  clear); ``https://`` verifies the server's certificate with the system's trust store.
- The token travels only in the ``Authorization`` header and never appears in an error.
- Every failure is a ``ClientError`` (a ``CorralError``: one line for the CLI): ``Refused``
  when the server answered with an error (its own ``{"error": {"code", "message"}}``; a
  resend will not help), ``ServerUnavailable`` when it could not be reached, timed out, or
  answered 502/503/504 (retry later: a launcher keeps its events and goes on).
- One ``Client`` keeps one connection open (keep-alive) and is not thread-safe. A request on
  a reused connection that the server had already closed is sent again once on a new one
  (the server closed it before reading the request, so nothing was done twice).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from typing import Any

from corral.client.wire import Closed, Connection
from corral.errors import CorralError

__all__ = ["Client", "ClientError", "Refused", "ServerUnavailable", "check_url"]

MAX_RESPONSE = 64 * 1024 * 1024


class ClientError(CorralError):
    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code


class ServerUnavailable(ClientError):
    """The server could not be reached or is temporarily unable to answer: retry later."""


class Refused(ClientError):
    """The server answered with an error: the request itself was refused."""


_UNAVAILABLE = (502, 503, 504)
# What a keep-alive connection closed by the server looks like on the next request.
_STALE = (Closed, BrokenPipeError, ConnectionResetError)


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
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0,
                 user_agent: str = "corral-cli") -> None:
        self.parts = check_url(url)
        self.base = self.parts.path.rstrip("/")
        self.token, self.timeout, self.user_agent = token, timeout, user_agent
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        host = self.parts.hostname or ""
        if self.parts.scheme == "https":
            import ssl

            return Connection(host, self.parts.port or 443, timeout=self.timeout,
                              tls=ssl.create_default_context())
        return Connection(host, self.parts.port or 80, timeout=self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(self, method: str, target: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, str, bytes]:
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connection()
            try:
                resp = self._conn.exchange(method, target, headers, data, limit=MAX_RESPONSE)
            except _STALE as err:
                self.close()
                if reused and attempt == 0:
                    continue
                raise self._unreachable(err) from None
            except OSError as err:  # timeouts, TLS, a cut or malformed response
                self.close()
                raise self._unreachable(err) from None
            except ValueError as err:  # a control character in the token or the path
                self.close()
                raise ClientError(f"request refused before sending: {err}") from None
            return resp.status, resp.reason, resp.body
        raise AssertionError("unreachable")

    def _unreachable(self, err: BaseException) -> ServerUnavailable:
        return ServerUnavailable(f"cannot reach the server at {self.parts.netloc}: "
                                 f"{getattr(err, 'strerror', None) or err or type(err).__name__}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Host": self.parts.netloc, "Accept": "application/json",
                   "Accept-Encoding": "identity", "User-Agent": self.user_agent}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, reason, raw = self._exchange(method, self.base + "/api/v1" + path, data,
                                             headers)
        if len(raw) > MAX_RESPONSE:
            raise ClientError("the server's answer is too large")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if 200 <= status < 300:
            return payload
        kind = ServerUnavailable if status in _UNAVAILABLE else Refused
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            raise kind(f"server: {error.get('message')} ({status})", status=status,
                       code=str(error.get("code", "")))
        raise kind(f"server answered {status} {reason}", status=status)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
