"""``type: aws`` bindings: the agent signs with placeholders, the upstream sees a valid real
signature (recomputed here with botocore from what the server received)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import httpx
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import require_root

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
    # headers_hex: what the upstream received (the proxy scrubs the keys from what it echoes)
    headers = {k.lower(): bytes.fromhex(v).decode("latin-1")
               for k, v in echo["headers_hex"]}  # type: ignore[attr-defined]
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


_FRESH_CHILD = """
import json, os, sys
from corral.proxy.service import drop_privileges
if sys.argv[1] == "preload":
    from corral.proxy.sigv4 import preload
    preload()
drop_privileges(65534, 65534)
stdlib_readable = os.access(os.path.dirname(os.__file__), os.R_OK)
try:
    from corral.proxy.sigv4 import resign
    req = json.loads(sys.argv[2])
    headers = [(k.encode(), v.encode()) for k, v in req["headers"]]
    keys = {"access_key_id": "AKIAREAL", "secret_access_key": "s"}
    out = resign("GET", req["url"], headers, keys, b"")
    ok = any(k.lower() == b"authorization" and b"AKIAREAL" in v for k, v in out)
    print(json.dumps({"ok": ok, "readable": stdlib_readable}))
except ImportError as err:
    print(json.dumps({"ok": False, "error": str(err), "readable": stdlib_readable}))
"""


@pytest.mark.parametrize("mode", ["preload", "lazy"])
def test_resigning_works_after_the_privilege_drop_in_a_fresh_interpreter(mode: str) -> None:
    """The proxy child forks from the lean launcher, which has not imported botocore's
    dependencies; after it drops to an unprivileged uid the interpreter's own files may be
    unreadable (a Python under a 0700 home). The child preloads the signer before the drop."""
    require_root()
    url = "https://api.corral.test/x"
    req = AWSRequest(method="GET", url=url, data=b"", headers={})
    SigV4Auth(Credentials("placeholder", "placeholder"), "sts", "eu-west-1").add_auth(req)
    arg = json.dumps({"url": url, "headers": list(req.headers.items())})
    done = subprocess.run([sys.executable, "-c", _FRESH_CHILD, mode, arg],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    if mode == "preload":
        assert result["ok"], result
    elif not result["readable"]:
        # The control: without the preload the lazy import fails on such an install.
        assert not result["ok"], result
