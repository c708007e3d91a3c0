"""What the sandbox gets from its proxy: the agent's environment and the trust bundle.

Light on purpose (no asyncio, no cryptography, no ``ssl``): the launcher computes these while
the proxy child, forked early, imports the proxy and generates the CA
(``corral.runtime.proxyproc``). The system CA file is found exactly as
``ssl.get_default_verify_paths().cafile`` finds it (``SSL_CERT_FILE`` if set, else OpenSSL's
compiled-in default; only an existing file counts), but from ``ssl``'s C module: importing
``ssl`` itself cost ``corral run -p`` ~4 ms.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["AWS_KEY_ID_PLACEHOLDER", "CA_VARS", "SYSTEM_BUNDLE", "agent_env", "placeholder",
           "system_cafile", "trust_bundle"]

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
           "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE")
AWS_KEY_ID_PLACEHOLDER = "AKIACORRALPLACEHOLDR"


def placeholder(name: str) -> str:
    """What the agent holds instead of binding ``name``'s secret (``scrub`` puts it back)."""
    return f"corral-placeholder-{name}"


def agent_env(policy: Any, proxy_port: int, proxy_host: str = "127.0.0.1",
              bundle_path: str = SYSTEM_BUNDLE) -> dict[str, str]:
    """Proxy variables (both cases), ``NO_PROXY``, the CA variables and credential placeholders."""
    host = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
    url = f"http://{host}:{proxy_port}"
    env = {
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "http_proxy": url,
        "https_proxy": url,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
    }
    for var in CA_VARS:
        env[var] = bundle_path
    bindings = getattr(policy, "credentials", {}) or {}
    for name, binding in bindings.items():
        if binding.kind == "aws":
            env["AWS_ACCESS_KEY_ID"] = AWS_KEY_ID_PLACEHOLDER
            env["AWS_SECRET_ACCESS_KEY"] = placeholder(name)
            if binding.aws_session_token:
                env["AWS_SESSION_TOKEN"] = placeholder(name)
        if binding.env:
            env[binding.env] = placeholder(name)
    return env


def system_cafile() -> str | None:
    """``ssl.get_default_verify_paths().cafile``: the environment variable OpenSSL names
    (``SSL_CERT_FILE``) if set, else its default file; ``None`` unless that is a file."""
    from _ssl import get_default_verify_paths

    env, default, _capath_env, _capath = get_default_verify_paths()
    cafile = os.environ.get(env, default)
    return cafile if os.path.isfile(cafile) else None


def trust_bundle(ca_pem: bytes) -> bytes:
    """The system roots followed by the sandbox's CA certificate."""
    path = system_cafile() or SYSTEM_BUNDLE
    system = Path(path).read_bytes() if Path(path).exists() else b""
    if system and not system.endswith(b"\n"):
        system += b"\n"
    return system + ca_pem
