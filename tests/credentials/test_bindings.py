"""Secrets resolved from real policies (config dir = trusted, a repo path = untrusted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.credentials import CredentialStore, resolve_secrets
from corral.errors import CorralError
from corral.policy import resolve

TRUSTED = """
name: team
egress:
  - {host: api.example.com, action: inspect, credential: gh}
  - {host: s3.example.com, action: inspect, credential: aws}
credentials:
  gh: {secret: "env:CORRAL_T_GH", header: Authorization, format: "token {secret}", env: GH_TOKEN}
  aws:
    type: aws
    access_key_id: store:aws-id
    secret_access_key: "cmd:printf secret-key"
"""


def test_resolve_trusted_policy(
    corral_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(corral_env["CORRAL_CONFIG"]) / "team.yaml"
    path.write_text(TRUSTED)
    monkeypatch.setenv("CORRAL_T_GH", "gh-value")
    CredentialStore().set("aws-id", "AKIAREAL")
    secrets = resolve_secrets(resolve([str(path)], use_cache=False))
    assert secrets == {
        "aws": {"access_key_id": "AKIAREAL", "secret_access_key": "secret-key"},
        "gh": "gh-value",
    }


def test_missing_secret_names_binding(corral_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "repo.yaml"
    path.write_text(
        "name: repo\negress:\n  - {host: a.example.com, action: inspect, credential: t}\n"
        "credentials:\n  t: {secret: missing-one}\n"
    )
    with pytest.raises(CorralError, match=r"credential 't' \(.*repo.yaml:5\).*creds set"):
        resolve_secrets(resolve([str(path)], use_cache=False))
