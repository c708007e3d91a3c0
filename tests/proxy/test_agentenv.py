"""``corral.proxy.agentenv``: the system CA file is found as ``ssl`` finds it, without ``ssl``."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from corral.proxy.agentenv import SYSTEM_BUNDLE, system_cafile, trust_bundle

CA = b"-----BEGIN CERTIFICATE-----\nsandbox-ca\n-----END CERTIFICATE-----\n"


def test_system_cafile_is_ssls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert system_cafile() == ssl.get_default_verify_paths().cafile
    assert trust_bundle(CA).endswith(CA) and trust_bundle(CA).count(b"BEGIN CERTIFICATE") > 10


def test_ssl_cert_file_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(b"-----BEGIN CERTIFICATE-----\nonly-root\n-----END CERTIFICATE-----")
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # does not change the file, as in ssl
    assert system_cafile() == ssl.get_default_verify_paths().cafile == str(roots)
    assert trust_bundle(CA) == roots.read_bytes() + b"\n" + CA
    # a variable naming no file counts as unset in ``ssl``: the bundle falls back
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "absent.pem"))
    assert system_cafile() is None is ssl.get_default_verify_paths().cafile
    system = Path(SYSTEM_BUNDLE).read_bytes() if Path(SYSTEM_BUNDLE).exists() else b""
    if system and not system.endswith(b"\n"):
        system += b"\n"
    assert trust_bundle(CA) == system + CA


def test_no_ssl_import() -> None:
    code = ("import sys; from corral.proxy.agentenv import agent_env, trust_bundle; "
            "agent_env(None, 3128); trust_bundle(b'x'); print('ssl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ}).stdout.strip()
    assert out == "False"
