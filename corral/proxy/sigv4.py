"""Re-sign AWS SigV4 requests with the host-side keys (``type: aws`` bindings).

The agent signs with placeholder keys; the proxy strips that signature and signs again with
botocore's signer for the same service and region (read from the agent's credential scope).

Invariants:
- Supported payload modes: a hex SHA-256 declared in ``x-amz-content-sha256`` (AWS checks the
  body against it), ``UNSIGNED-PAYLOAD``, or no declaration with a body the caller buffered
  (bounded by ``MAX_BUFFERED_BODY``). ``STREAMING-*`` chunk-signed payloads are refused with a
  clear message: each chunk's signature chains from the agent's placeholder signature.
- The re-signed request carries only the real signature: the agent's Authorization,
  X-Amz-Date and X-Amz-Security-Token are removed first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.awsrequest import AWSRequest

__all__ = ["MAX_BUFFERED_BODY", "SigV4Error", "needs_body", "preload", "resign"]

MAX_BUFFERED_BODY = 16 * 1024 * 1024
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STRIP = {"authorization", "x-amz-date", "x-amz-security-token"}


class SigV4Error(Exception):
    """The request cannot be re-signed; the message says why and what to do."""


def _declared(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"x-amz-content-sha256":
            return value.decode("latin-1").strip()
    return None


def preload() -> None:
    """Import botocore's signer now. The proxy child calls this before it drops privileges:
    afterwards the interpreter's own files may be unreadable (a Python under a 0700 home), and
    a lazy import on the first re-signing would fail."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials  # noqa: F401


def needs_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """True when the payload hash must be computed from a buffered body."""
    declared = _declared(headers)
    return declared is None


def resign(
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    keys: Mapping[str, str],
    body: bytes | None,
) -> list[tuple[bytes, bytes]]:
    auth = next((v for n, v in headers if n.lower() == b"authorization"), b"").decode("latin-1")
    scope = _SCOPE.search(auth)
    if scope is None:
        raise SigV4Error(
            "request is not SigV4-signed; sign it with the placeholder AWS keys from the "
            "environment so the proxy can re-sign it"
        )
    region, service = scope.group(1), scope.group(2)
    declared = _declared(headers)
    if declared is not None and declared.startswith("STREAMING-"):
        raise SigV4Error(
            f"streaming-chunked SigV4 payloads ({declared}) cannot be re-signed by the proxy; "
            "configure the client for UNSIGNED-PAYLOAD or a signed single-chunk upload"
        )
    if declared is not None and declared != "UNSIGNED-PAYLOAD" and not _HEX64.fullmatch(declared):
        raise SigV4Error(f"unsupported x-amz-content-sha256 value {declared!r}")
    if declared is None:
        declared = hashlib.sha256(body or b"").hexdigest()
    payload_hash = declared
    # botocore loads on the first re-signing only: it is ~50 ms of every proxy's startup else
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    kept = [(n, v) for n, v in headers if n.decode("latin-1").lower() not in _STRIP]
    request = AWSRequest(
        method=method,
        url=url,
        headers={n.decode("latin-1"): v.decode("latin-1") for n, v in kept},
    )
    creds = Credentials(
        keys["access_key_id"], keys["secret_access_key"], keys.get("session_token") or None
    )
    base: Any = S3SigV4Auth if service == "s3" else SigV4Auth

    class _Signer(base):  # type: ignore[misc]
        def payload(self, request: AWSRequest) -> str:
            return payload_hash

        def _modify_request_before_signing(self, request: AWSRequest) -> None:
            super()._modify_request_before_signing(request)
            if "X-Amz-Content-SHA256" in request.headers or service == "s3":
                del request.headers["X-Amz-Content-SHA256"]
                request.headers["X-Amz-Content-SHA256"] = payload_hash

    _Signer(creds, service, region).add_auth(request)
    return [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in request.headers.items()]
