"""The launcher does not trust a project policy like local config (PLATFORM.md): a server that
hands out a policy naming /root in files.read, a tls_ca path, an env: secret, or a private
address the host does not permit is refused with 125 naming the rule. The server here is a
compromised one (a real HTTP server on loopback serving what it likes): a real ``corral
server`` refuses to store such policies, so only a lying server can send them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy import load_policy_text


class Lying:
    def __init__(self) -> None:
        self.policy: dict[str, Any] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (outer.policy if self.path.endswith("/policy") else
                        {"name": "shop", "team": "web", "require_server": False,
                         "max_offline_s": 86400}) if self.path.startswith(
                    "/api/v1/projects/shop") else None
                data = json.dumps(body or {"error": {"code": "not_found",
                                                     "message": "no"}}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, text: str, filename: str = "evil.yaml") -> None:
        from corral.policy import PolicyError
        from corral.policy.compose import compose

        try:
            digest = compose([load_policy_text(filename, text)]).digest
        except PolicyError:  # no real server could compute one: the launcher must refuse first
            digest = "00" * 32
        head = f"# shop/evil version 1 ({filename}, sha256 {'ab' * 32})\n"
        self.policy = {"project": "shop", "digest": digest, "yaml": head + text, "policies": [
            {"name": "evil", "version": 1, "scope": "project", "filename": filename,
             "digest": "ab" * 32}]}


@pytest.fixture
def lying() -> Iterator[Lying]:
    server = Lying()
    yield server
    server.httpd.shutdown()


def _run(env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", "run", "--project", "shop", "--",
                           "true"], env={**os.environ, **env, "CORRAL_SERVER": url,
                                         "CORRAL_TOKEN": "crl_x"},
                          capture_output=True, text=True, timeout=60)


PEM_PATH = "/etc/ssl/certs/ca-certificates.crt"
CASES = [
    ("files:\n  read: [/root]\n", "evil.yaml:3: files.read: /root is outside"),
    ("files:\n  read: [/tmp/../root/.ssh]\n", "files.read: /tmp/../root/.ssh is outside"),
    ("files:\n  home: /etc\n", "evil.yaml:3: files.home: /etc is outside"),
    (f"egress:\n  - host: api.example.com\n    action: inspect\n    tls_ca: {PEM_PATH}\n",
     "evil.yaml:3: tls_ca: a project policy gives the CA inline (PEM), not a path"),
    ("egress:\n  - host: 10.1.2.3\n    action: direct\n",
     "evil.yaml:3: a private address 10.1.2.3: not in this host's project_allow_private"),
    ("egress:\n  - host: db.internal\n    action: direct\n    allow_private: true\n",
     "evil.yaml:3: allow_private on db.internal: only an IP address"),
    ("egress:\n  - host: 192.168.9.9\n    action: direct\n    allow_private: true\n",
     "allow_private 192.168.9.9: not in this host's project_allow_private (10.5.0.0/16"),
]


def test_trust_rules_refuse(lying: Lying, corral_env: dict[str, str]) -> None:
    Path(corral_env["CORRAL_CONFIG"], "config.yaml").write_text(
        "project_allow_private: [10.5.0.0/16]\n")
    for body, named in CASES:
        lying.serve("name: evil\n" + body)
        done = _run(corral_env, lying.url)
        assert done.returncode == 125, (body, done.stderr)
        assert "refused the project's policy" in done.stderr and named in done.stderr, (
            body, done.stderr)
    lying.serve("name: evil\ncredentials:\n  k: {secret: 'env:HOME'}\n")
    done = _run(corral_env, lying.url)
    assert done.returncode == 125 and "env: secret sources are only allowed" in done.stderr
    # the stream altered on the way (its digest no longer matches): refused too
    lying.serve("name: evil\n")
    lying.policy["yaml"] += "egress:\n  - {host: example.com, action: direct}\n"
    done = _run(corral_env, lying.url)
    assert done.returncode == 125 and "does not match its digest" in done.stderr


def test_permitted_private_range_and_inline_ca(lying: Lying, corral_env: dict[str, str]
                                              ) -> None:
    from corral.proxy import CertificateAuthority

    Path(corral_env["CORRAL_CONFIG"], "config.yaml").write_text(
        "project_allow_private: [10.5.0.0/16]\n")
    ca = CertificateAuthority(label="a project's upstream")
    pem = ca.cert_pem.decode().strip().replace("\n", "\n      ")
    lying.serve(f"name: evil\negress:\n  - host: 10.5.1.1\n    action: inspect\n"
                f"    tls_ca: |\n      {pem}\n")
    done = _run(corral_env, lying.url)
    assert "refused" not in done.stderr, done.stderr
    (written,) = Path(corral_env["CORRAL_HOME"], "projects", "ca").glob("*.pem")
    assert written.stat().st_mode & 0o777 == 0o600
    assert written.read_text().strip() == ca.cert_pem.decode().strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["..", ".", "root", "etc", "home", "u", "ws", "~", "",
                                       "x", "link"]), min_size=1, max_size=6),
       key=st.sampled_from(["read", "home", "workspace"]))
def test_paths_outside_home_and_workspace_never_pass(parts: list[str], key: str,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Any path a server policy names in files.* is accepted only if it lands (after ``~``,
    ``..`` and symlinks) inside the invoking user's home or the workspace."""
    from corral.errors import CorralError
    from corral.runtime.trust import check_server

    home = tmp_path / "home" / "u"
    ws = tmp_path / "ws"
    for d in (home, ws):
        d.mkdir(parents=True, exist_ok=True)
    (home / "link").unlink(missing_ok=True)
    (home / "link").symlink_to("/etc")
    monkeypatch.setenv("SUDO_UID", "65534")
    monkeypatch.setenv("HOME", str(home))
    import pwd

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    path = "/".join(parts)
    if not path.startswith(("~", "/")):
        path = f"{home}/{path}" if parts[0] != "x" else f"/{path}"
    value = f"[{json.dumps(path)}]" if key == "read" else json.dumps(path)
    text = f"name: p\nfiles:\n  {key}: {value}\n"
    try:
        loaded = load_policy_text("p.yaml", text)
    except Exception:
        return
    expanded = path.replace("~", str(home), 1) if path.startswith("~") else path
    real = os.path.realpath(expanded)
    roots = [str(home)] + ([str(ws)] if key == "read" else [])
    inside = any(os.path.commonpath([real, r]) == r for r in roots) and any(
        os.path.commonpath([os.path.normpath(expanded), r]) == r for r in roots)
    try:
        check_server([loaded], str(ws) if key == "read" else None)
        accepted = True
    except CorralError as err:
        assert err.exit_code == 125
        accepted = False
    if accepted:
        assert inside, (path, real)
