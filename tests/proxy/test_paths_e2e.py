"""Encoded, cased and servlet-style paths through the real proxy (hardening issue, item 1).

Plain HTTP (absolute-form) and inspected TLS, with real curl sending each path as written
(``--path-as-is``): a path any server may read as ``/admin/...`` is refused before it leaves,
audited, and the upstream never sees it; the credential is never injected for ``/v1/..;/``.
"""

from __future__ import annotations

import pytest

from .conftest import RunningProxy, curl

POLICY = """
name: paths
egress:
  - host: api.corral.test
    action: deny
    paths: ["/admin/**"]
    reason: the admin API is out of scope
    allow_private: true
  - host: api.corral.test
    ports: [80]
    action: inspect
    paths: ["/**"]
    credential: tok
    allow_private: true
  - host: api.corral.test
    ports: [443]
    action: inspect
    paths: ["/**"]
    credential: tok
    tls_ca: OUTSIDE_CA
    allow_private: true
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK,
        plaintext: true}
"""
VARIANTS = ["/%61dmin/x", "/adm%69n/users", "/ADMIN/x", "/Admin/x", "/admin;x/y",
            "/admin%20/x", "/admin%00/x", "/admin..;/x", "/v1/..;/admin/x", "/v1/%2e%2e/admin"]


@pytest.fixture
def proxy(make_proxy) -> RunningProxy:  # type: ignore[no-untyped-def]
    return make_proxy(POLICY, {"tok": "SECRET-PATHS"})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_variants_never_reach_upstream(proxy: RunningProxy, scheme: str) -> None:
    for path in VARIANTS:
        done = curl(proxy, "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                    f"{scheme}://api.corral.test{path}")
        assert done.stdout in ("400", "403"), (path, done.stdout, done.stderr)
    denies = proxy.sink.of("proxy.deny")
    assert len(denies) >= len(VARIANTS)
    assert not proxy.sink.of("credential.inject")
    assert not [f for t, f in proxy.sink.events if t.startswith("proxy.allow")]


def test_plain_encodings_still_pass(proxy: RunningProxy) -> None:
    done = curl(proxy, "--path-as-is", "-w", "%{http_code}", "-o", "/dev/null",
                "http://api.corral.test/%65cho")
    assert done.stdout == "200", done.stderr
    assert proxy.sink.of("credential.inject")
