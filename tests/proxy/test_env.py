"""What the agent is handed: proxy and CA variables, placeholders, a bundle without the key."""

from __future__ import annotations

from pathlib import Path

from corral.policy import resolve
from corral.proxy import ProxyService, agent_env, trust_bundle

POLICY = """
name: env
egress:
  - {host: api.example.com, action: inspect, credential: gh}
  - {host: s3.example.com, action: inspect, credential: aws}
credentials:
  gh: {secret: gh-token, env: GH_TOKEN}
  aws: {type: aws, access_key_id: a, secret_access_key: b, session_token: c}
"""


def test_agent_env_and_bundle(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(POLICY)
    secrets = {"gh": "REAL-GH", "aws": {"access_key_id": "AKIAREAL", "secret_access_key": "S",
                                        "session_token": "T"}}
    svc = ProxyService(policy=resolve([str(path)], use_cache=False), secrets=secrets)
    env = agent_env(svc.policy, 3128)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[var] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE"):
        assert env[var] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["GH_TOKEN"].startswith("corral-placeholder")
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SESSION_TOKEN"].startswith("corral-placeholder")
    text = repr(env)
    for secret in ("REAL-GH", "AKIAREAL"):
        assert secret not in text
    bundle = trust_bundle(svc.ca.cert_pem)
    assert bundle.endswith(svc.ca.cert_pem) and b"PRIVATE KEY" not in bundle
    assert bundle.count(b"BEGIN CERTIFICATE") > 10  # the system CAs are kept
    # Name constraints follow the inspected hosts of the policy.
    assert svc.ca.name_constrained
