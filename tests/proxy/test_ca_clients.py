"""The sandbox CA is accepted by every major TLS client, and its name constraints still bind.

Clients: curl and Python (OpenSSL), node (OpenSSL, its own verifier settings) and Bun
(BoringSSL: it rejects any chain under a CA with an iPAddress name constraint, which is what
broke Claude Code). Bun comes from npm into a directory of this test session. Go is used when
``go`` is installed (it is not on the project's machines).

When the agent refuses corral's certificate, the audit trail and the run summary say so.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import require, require_tools

from corral.audit import AuditStore, summary
from corral.proxy.tls import CertificateAuthority

from .conftest import Outside, ProxyFactory, RunningProxy, curl, wait_for

IP_ONLY = """
name: ip-only
egress:
  - host: OUTSIDE_IP
    action: inspect
    tls_ca: OUTSIDE_CA
"""
MIXED = """
name: mixed
egress:
  - host: api.corral.test
    action: inspect
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: OUTSIDE_IP
    action: inspect
    tls_ca: OUTSIDE_CA
"""
NODE_CONNECT = r"""
const http = require('http'), tls = require('tls');
const target = new URL(process.argv[2]);
const proxy = process.env.HTTPS_PROXY ? new URL(process.env.HTTPS_PROXY) : null;
const host = target.hostname, port = target.port || 443;
function speak(socket) {
  const opts = {socket, host, port};
  if (!require('net').isIP(host)) opts.servername = host;
  const s = tls.connect(opts, () => {
    s.write(`GET ${target.pathname} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
  let data = '';
  s.on('data', d => data += d);
  s.on('end', () => console.log(data.split('\r\n')[0].split(' ')[1]));
  s.on('error', e => {
    console.log('ERROR ' + (e.code || '') + ' ' + e.message);
    process.exit(1);
  });
}
if (proxy) {
  const req = http.request({host: proxy.hostname, port: proxy.port, method: 'CONNECT',
                            path: `${host}:${port}`});
  req.on('connect', (res, socket) => res.statusCode === 200 ? speak(socket)
    : (console.log('CONNECT ' + res.statusCode), process.exit(2)));
  req.on('error', e => { console.log('ERROR ' + e.message); process.exit(1); });
  req.end();
} else {
  speak(require('net').connect(port, host));
}
"""
BUN_FETCH = r"""
try {
  const r = await fetch(process.argv[2]);
  console.log(r.status);
} catch (e) {
  console.log('ERROR ' + (e.code || '') + ' ' + e.message);
  process.exit(1);
}
"""
PY_GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=15).status)
"""

Client = Callable[[dict[str, str], str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def bun(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bun binary of the npm package ``bun``, installed for this test session."""
    require_tools("npm")
    where = tmp_path_factory.mktemp("bun")
    done = subprocess.run(
        ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(where),
         "bun@1"],
        capture_output=True, text=True, timeout=600,
    )
    modules = where / "node_modules"
    for candidate in [modules / "bun/bin/bun.exe", modules / "bun/bin/bun",
                      *modules.glob("@oven/bun-linux-*/bin/bun")]:
        if candidate.is_file() and subprocess.run(
            [str(candidate), "--version"], capture_output=True, timeout=60
        ).returncode == 0:
            return str(candidate)
    require(False, f"bun from npm (npm install bun: {done.stderr.strip()[-300:]})")
    raise AssertionError("unreachable")


@pytest.fixture
def clients(bun: str, tmp_path: Path) -> dict[str, Client]:
    require_tools("node")
    scripts = {"node.js": NODE_CONNECT, "bun.mjs": BUN_FETCH, "get.py": PY_GET}
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)

    def run(argv: list[str]) -> Client:
        def client(env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
            full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env}
            return subprocess.run([*argv, url], capture_output=True, text=True, env=full,
                                  timeout=40)
        return client

    found: dict[str, Client] = {
        "curl": run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}"]),
        "python": run([sys.executable, str(tmp_path / "get.py")]),
        "node": run(["node", str(tmp_path / "node.js")]),
        "bun": run([bun, str(tmp_path / "bun.mjs")]),
    }
    go = shutil.which("go")
    if go is not None:  # not on the project's machines; used where a developer has it
        (tmp_path / "get.go").write_text(GO_GET)
        found["go"] = run([go, "run", str(tmp_path / "get.go")])
    return found


GO_GET = """package main

import ("fmt"; "net/http"; "os")

func main() {
\tr, err := http.Get(os.Args[1])
\tif err != nil { fmt.Println("ERROR", err); os.Exit(1) }
\tfmt.Println(r.StatusCode)
}
"""


def _ok(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == 0 and done.stdout.strip().endswith("200")


@pytest.mark.parametrize("policy", [IP_ONLY, MIXED], ids=["ip-only", "ip-and-name"])
def test_every_client_accepts_the_ca_for_ip_and_name_hosts(
    make_proxy: ProxyFactory, outside: Outside, clients: dict[str, Client], policy: str
) -> None:
    proxy = make_proxy(policy)
    urls = [f"https://{outside.ip}/echo"]
    if policy is MIXED:
        urls.append("https://api.corral.test/echo")
    for url in urls:
        for name, client in clients.items():
            done = client(proxy.env, url)
            assert _ok(done), (name, url, done.stdout, done.stderr)
    inspected = proxy.sink.of("proxy.inspect", host=outside.ip, status=200)
    assert len(inspected) >= len(clients)
    assert not proxy.sink.of("error")


class _TLSServer:
    """Presents the CA's leaf for ``host`` on loopback (v4 and v6) to whoever connects."""

    def __init__(self, ca: CertificateAuthority, host: str) -> None:
        self.ctx = ca.server_context(host)
        self.sock = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(10)
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                                b"connection: close\r\n\r\nok")
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


Serve = Callable[[CertificateAuthority, str], tuple[int, dict[str, str]]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    servers: list[_TLSServer] = []

    def start(ca: CertificateAuthority, host: str) -> tuple[int, dict[str, str]]:
        bundle = tmp_path / f"ca{len(servers)}.pem"
        bundle.write_bytes(ca.cert_pem)
        servers.append(_TLSServer(ca, host))
        env = {"SSL_CERT_FILE": str(bundle), "CURL_CA_BUNDLE": str(bundle),
               "NODE_EXTRA_CA_CERTS": str(bundle)}
        return servers[-1].port, env

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    "inspected", [["10.0.0.7"], ["api.example.com", "10.0.0.7"], ["*.corp.example"]]
)
def test_every_client_enforces_the_dns_constraints(
    clients: dict[str, Client], serve: Serve,
    inspected: list[str],
) -> None:
    """IP leaves verify everywhere; a leaf the CA minted for a DNS name outside its
    constraints (here "localhost") is refused by every client, Bun included."""
    ca = CertificateAuthority(inspected)
    assert ca.name_constrained
    port, env = serve(ca, "127.0.0.1")
    for name, client in clients.items():
        done = client(env, f"https://127.0.0.1:{port}/")
        assert _ok(done), (name, done.stdout, done.stderr)
    port, env = serve(ca, "localhost")
    for name, client in clients.items():
        done = client(env, f"https://localhost:{port}/")
        assert not _ok(done), (name, "accepted a leaf outside the constraints", done.stdout)


def test_rejected_certificate_is_named_in_the_trail_and_summary(
    make_proxy: ProxyFactory, outside: Outside, clients: dict[str, Client],
    corral_env: dict[str, str],
) -> None:
    proxy: RunningProxy = make_proxy(MIXED)
    # The agent trusts only some other CA: it must refuse corral's certificate.
    distrust = {k: (str(outside.ca) if k in _CA_VARS else v) for k, v in proxy.env.items()}
    done = curl(RunningProxy(proxy.port, proxy.policy, proxy.sink, proxy.bundle, distrust,
                             proxy.handle), "https://api.corral.test/echo")
    assert done.returncode == 60, done.stderr
    # Bun resets the connection and node closes it, neither with an alert: still named.
    for name in ("bun", "node", "python"):
        assert not _ok(clients[name](distrust, f"https://{outside.ip}/echo")), name
    wait_for(lambda: len(proxy.sink.of("error")) >= 4)
    errors = [e for e in proxy.sink.of("error") if e["component"] == "proxy.tls"]
    messages = sorted(e["message"] for e in errors)
    assert len(messages) == 4, messages
    assert all(m.startswith("the agent rejected corral's certificate for ") for m in messages), (
        messages
    )
    assert any(m == "the agent rejected corral's certificate for api.corral.test: "
               "TLS alert 'unknown ca'" for m in messages), messages
    assert any(m.startswith(f"the agent rejected corral's certificate for {outside.ip}")
               for m in messages), messages
    store = AuditStore.open()
    trail = store.trail("sb-tls")
    for kind, fields in proxy.sink.events:
        trail.emit(kind, **fields)
    trail.close("ok")
    store.close()
    shown = summary("sb-tls")
    assert ("the agent rejected corral's certificate for api.corral.test: TLS alert 'unknown ca'"
            in shown), shown


_CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO", "PIP_CERT", "AWS_CA_BUNDLE")


@pytest.mark.parametrize(
    ("inspected", "subtrees"),
    [(["10.0.0.7", "::1"], ["invalid"]), (["api.example.com", "10.0.0.7"], ["api.example.com"]),
     (["*.corp.example", "b.example"], ["b.example", "corp.example"])],
)
def test_the_ca_carries_dns_subtrees_only(inspected: list[str], subtrees: list[str]) -> None:
    from cryptography import x509

    ext = CertificateAuthority(inspected).cert.extensions.get_extension_for_class(
        x509.NameConstraints
    )
    assert ext.critical and ext.value.excluded_subtrees is None
    permitted = ext.value.permitted_subtrees or []
    assert all(isinstance(n, x509.DNSName) for n in permitted)
    assert sorted(n.value for n in permitted) == subtrees
