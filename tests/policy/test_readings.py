"""Path readings: a path rule holds however a server reads the path (hardening issue, item 1).

The class is attacked with generated paths (encodings, case, ``;`` parameters, ``..;``, dot
segments, encoded and back slashes, trailing dots and spaces, double encoding) and checked
against two real readings: nginx's (a real nginx on loopback reports the ``$uri`` it routed)
and Tomcat's (``tomcat_oracle``, transcribed from its source). A deny must hold if *any* of
them reads the path into the denied tree, an allow carrying a credential only if *every* one
reads it into the allowed tree.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy import resolve
from corral.policy.readings import UnreadablePath, readings
from corral.policy.resolved import ResolvedPolicy

from .tomcat_oracle import tomcat_path

DENY_ADMIN = """name: p
egress:
  - host: api.example.test
    action: deny
    paths: ["/admin/**"]
  - host: api.example.test
    action: inspect
    credential: tok
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}"}
"""
ALLOW_V1 = """name: p
egress:
  - host: api.example.test
    action: inspect
    paths: ["/v1/**"]
    credential: tok
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}"}
"""
ISSUE_VARIANTS = ["/%61dmin/x", "/adm%69n/users", "/ADMIN/x", "/Admin/x", "/admin;x/y",
                  "/admin%20/x", "/admin%00/x", "/admin..;/x", "/v1/..;/admin/x",
                  "/x/%2e%2e/admin/y", "/admin./x", "/%2561dmin/x", "/a%2f..%2fadmin/x",
                  "/a\\..\\admin\\x", "/admin%2Fx", "/ADMIN%2fx", "/admin"]


def _policy(tmp_path: Path, text: str) -> ResolvedPolicy:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return resolve([str(path)], use_cache=False)


@pytest.fixture
def deny_admin(tmp_path: Path, corral_env: dict[str, str]) -> ResolvedPolicy:
    return _policy(tmp_path, DENY_ADMIN)


@pytest.fixture
def allow_v1(tmp_path: Path, corral_env: dict[str, str]) -> ResolvedPolicy:
    return _policy(tmp_path, ALLOW_V1)


def _under(tree: str, path: str | None, fold: bool = False) -> bool:
    if path is None:
        return False
    if fold:
        path = path.lower()
    return path == tree or path.startswith(tree + "/")


@pytest.mark.parametrize("target", ISSUE_VARIANTS)
def test_issue_variants_are_denied(deny_admin: ResolvedPolicy, target: str) -> None:
    decision = deny_admin.decide_request("api.example.test", 443, "GET", target)
    assert decision.action == "deny", target
    assert decision.rule is not None or decision.status == 400, decision


def test_servlet_dot_dot_semicolon_gets_no_credential(allow_v1: ResolvedPolicy) -> None:
    decision = allow_v1.decide_request("api.example.test", 443, "GET", "/v1/..;/admin/x")
    assert (decision.action, decision.status) == ("deny", 400)
    assert "'/admin/x'" in decision.message
    ok = allow_v1.decide_request("api.example.test", 443, "GET", "/v1/a%2Fb;c/%7Euser")
    assert ok.action == "inspect" and ok.rule is not None and ok.rule.credential == "tok"


def test_plain_paths_keep_one_reading() -> None:
    assert readings("/repos/Owner/Repo/pulls?state=open") == ["/repos/Owner/Repo/pulls"]
    assert readings("/%7Euser/%41") == ["/~user/A"]


@pytest.mark.parametrize(("target", "why"), [
    ("/a#b", "fragment"), ("*", "absolute path"), ("/a%zz", "hex escape"),
    ("/a%00", "control"), ("/a%2500", "control"), ("/a%0d%0a", "control"), ("/é", "non-ASCII"),
])
def test_unreadable_targets(target: str, why: str) -> None:
    with pytest.raises(UnreadablePath, match=why):
        readings(target)


# -- the generated class --------------------------------------------------------------------

_TOKENS = ["admin", "v1", "x", "users", ".", "..", "..;", ";x", "admin;y=1", "admin.", "admin ",
           "", "%2e", "%2e%2e", "%2f", "%5c", "\\", "..\\", "%252e%252e", "%2561dmin", ";"]


@st.composite
def _segment(draw: st.DrawFn) -> str:
    token = draw(st.sampled_from(_TOKENS))
    out = []
    for char in token:
        if char.isalpha() and draw(st.booleans()):
            char = char.upper() if draw(st.booleans()) else f"%{ord(char):02x}"
        elif char == " ":
            char = "%20"
        elif char in ".;" and draw(st.integers(0, 3)) == 0:
            char = f"%{ord(char):02X}"
        out.append(char)
    return "".join(out)


PATHS = st.lists(_segment(), min_size=1, max_size=5).map(lambda segs: "/" + "/".join(segs))


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=PATHS)
def test_tomcat_reading_never_escapes_a_deny(deny_admin: ResolvedPolicy, target: str) -> None:
    decision = deny_admin.decide_request("api.example.test", 443, "GET", target)
    tomcat = tomcat_path(target)
    if _under("/admin", tomcat) or _under("/admin", tomcat, fold=True):
        assert decision.action == "deny", (target, tomcat, decision)


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=PATHS.map(lambda p: "/v1" + p))
def test_credential_only_if_tomcat_agrees(allow_v1: ResolvedPolicy, target: str) -> None:
    decision = allow_v1.decide_request("api.example.test", 443, "GET", target)
    tomcat = tomcat_path(target)
    if decision.action != "deny" and tomcat is not None:
        assert _under("/v1", tomcat), (target, tomcat)


# -- real nginx ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    require_tools("nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    default_type text/plain;
    location / {{ return 200 "$uri"; }}
  }}
}}
""")
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx_bin, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("nginx did not start")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def nginx_uri(port: int, target: str) -> str | None:
    """The path nginx routes ``target`` to, or None when nginx refuses it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", target, headers={"Host": "api.example.test"})
        response = conn.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        return body if response.status == 200 else None
    finally:
        conn.close()


def test_nginx_reads_the_issue_variants_as_admin(nginx: int) -> None:
    """The oracle itself: nginx really routes the issue's encodings to /admin."""
    assert nginx_uri(nginx, "/%61dmin/x") == "/admin/x"
    assert nginx_uri(nginx, "/x/%2e%2e/admin/y") == "/admin/y"


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=PATHS)
def test_nginx_reading_never_escapes_a_deny(nginx: int, deny_admin: ResolvedPolicy,
                                            target: str) -> None:
    decision = deny_admin.decide_request("api.example.test", 443, "GET", target)
    uri = nginx_uri(nginx, target)
    if _under("/admin", uri) or _under("/admin", uri, fold=True):
        assert decision.action == "deny", (target, uri, decision)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=PATHS.map(lambda p: "/v1" + p))
def test_credential_only_if_nginx_agrees(nginx: int, allow_v1: ResolvedPolicy,
                                         target: str) -> None:
    decision = allow_v1.decide_request("api.example.test", 443, "GET", target)
    uri = nginx_uri(nginx, target)
    if decision.action != "deny" and uri is not None:
        assert _under("/v1", uri), (target, uri)
