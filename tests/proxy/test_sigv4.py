"""``type: aws`` bindings: the agent signs with placeholders, the upstream sees a valid real
signature (recomputed here with botocore from what the server received)."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .conftest import RunningProxy

POLICY = """
name: aws
egress:
  - host: api.corral.test
    action: inspect
    credential: aws
    tls_ca: OUTSIDE_CA
    allow_private: true
credentials:
  aws:
    type: aws
    access_key_id: aws-id
    secret_access_key: aws-secret
"""
REAL = {"access_key_id": "AKIAREALKEY000000001", "secret_access_key": "real/secret/key"}


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:  # type: ignore[no-untyped-def]
    return make_proxy(POLICY, {"aws": REAL})


def _agent_request(proxy: RunningProxy, method: str, path: str, service: str,
                   body: bytes = b"", payload: str | None = None) -> httpx.Response:
    url = f"https://api.corral.test{path}"
    headers = {"x-amz-content-sha256": payload} if payload else {}
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    creds = Credentials(proxy.env["AWS_ACCESS_KEY_ID"], proxy.env["AWS_SECRET_ACCESS_KEY"])
    (S3SigV4Auth if service == "s3" else SigV4Auth)(creds, service, "eu-west-1").add_auth(req)
    if payload and payload.startswith("STREAMING-"):  # what aws-chunked uploads declare
        del req.headers["x-amz-content-sha256"]
        req.headers["x-amz-content-sha256"] = payload
    ctx = ssl.create_default_context(cafile=str(proxy.bundle))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=10) as client:
        return client.request(method, url, headers=dict(req.headers.items()), content=body)


def _check_signature(echo: dict[str, object], method: str, service: str, body: bytes) -> None:
    headers = {k.lower(): v for k, v in echo["headers"]}  # type: ignore[attr-defined]
    auth = headers["authorization"]
    assert f"Credential={REAL['access_key_id']}/" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    signature = auth.split("Signature=")[1]
    req = AWSRequest(method=method, url=f"https://api.corral.test{echo['path']}", data=body,
                     headers={h: headers[h] for h in signed})
    req.context["timestamp"] = headers["x-amz-date"]
    creds = Credentials(REAL["access_key_id"], REAL["secret_access_key"])
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(creds, service, "eu-west-1")
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    assert signature == expected


def test_resigned_get_and_unsigned_payload_put(proxy: RunningProxy) -> None:
    got = _agent_request(proxy, "GET", "/echo?list-type=2&prefix=a%2Fb", "sts")
    assert got.status_code == 200, got.text
    _check_signature(got.json(), "GET", "sts", b"")
    put = _agent_request(proxy, "PUT", "/echo/key.txt", "s3", b"hello", "UNSIGNED-PAYLOAD")
    assert put.status_code == 200, put.text
    _check_signature(put.json(), "PUT", "s3", b"hello")
    post = _agent_request(proxy, "POST", "/echo", "sts", b"Action=GetCallerIdentity")
    _check_signature(post.json(), "POST", "sts", b"Action=GetCallerIdentity")
    assert len(proxy.sink.of("credential.inject", binding="aws")) == 3
    assert "real/secret" not in json.dumps(proxy.sink.events)


def test_streaming_payload_refused_clearly(proxy: RunningProxy) -> None:
    resp = _agent_request(proxy, "PUT", "/echo/k", "s3", b"x",
                          "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    assert resp.status_code == 403
    assert "streaming-chunked SigV4 payloads" in resp.text
