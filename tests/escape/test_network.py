"""Network layer: nothing leaves the sandbox except through the proxy hooks.

The sandbox's veth peer is moved into a test "outside" namespace, so every probe has a real
route to a real server: only the sandbox's netfilter rules stand in the way. Each blocked probe
has a positive control: the same probe in the same sandbox with only the nft table deleted
reaches the server (or, for host-side targets, the same probe run on the host reaches them).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from escape.conftest import Outside, host_probe, in_netns, probe_in, remove_netfilter

pytestmark = pytest.mark.root

ROUTED = [
    ("tcp", Outside.V4, 8080),
    ("tcp", Outside.V4, 22),
    ("tcp", Outside.V6, 8080),
    ("tcp-web-without-proxy", Outside.V4, 443),
    ("udp", Outside.V4, 9999),
    ("udp", Outside.V6, 9999),
    ("dns-without-stub", Outside.V4, 53),
    ("dns-tcp-without-stub", Outside.V4, 53),
    ("icmp", Outside.V4, 0),
]


def _kind(case: str) -> str:
    return {"tcp-web-without-proxy": "tcp", "dns-without-stub": "udp",
            "dns-tcp-without-stub": "tcp"}.get(case, case)


@pytest.mark.parametrize(
    ("case", "host", "port"), ROUTED, ids=[f"{c}-{h}-{p}" for c, h, p in ROUTED]
)
def test_routed_egress_is_rejected(sandbox, outside, case: str, host: str, port: int) -> None:
    sb = sandbox()
    outside.attach(sb)
    # let the sandbox user open ICMP echo sockets, so only netfilter can stop the ping
    in_netns(sb, ["sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"])
    kind = _kind(case)
    args = (host,) if kind == "icmp" else (host, port)
    blocked = probe_in(sb, kind, *args)
    assert blocked.startswith("err"), blocked
    assert outside.contacts() == []
    remove_netfilter(sb)  # positive control: same sandbox, same route, no rules
    reached = probe_in(sb, kind, *args)
    assert reached.startswith("ok"), reached


@pytest.mark.parametrize("kind", ["raw", "packet"])
def test_raw_and_packet_sockets_refused(sandbox, kind: str) -> None:
    sb = sandbox()
    assert probe_in(sb, kind).startswith("err")
    assert host_probe(kind).startswith("ok")  # control: root on the host may open one


def test_own_loopback_works(sandbox) -> None:
    sb = sandbox()
    code = (
        "import socket,threading;s=socket.create_server(('127.0.0.1',7000));"
        "threading.Thread(target=lambda:s.accept()[0].sendall(b'hi'),daemon=True).start();"
        "c=socket.create_connection(('127.0.0.1',7000));print('ok',c.recv(2).decode())"
    )
    from escape.conftest import run_in

    assert run_in(sb, ["/usr/bin/python3", "-c", code]).line == "ok hi"


@contextlib.contextmanager
def _host_tcp_server(addr: str) -> Iterator[int]:
    srv = socket.create_server((addr, 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                conn.sendall(b"host-secret")
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        srv.close()


def test_host_loopback_service_unreachable(sandbox) -> None:
    with _host_tcp_server("127.0.0.1") as port:
        sb = sandbox()
        assert probe_in(sb, "tcp", "127.0.0.1", port).startswith("err")
        assert host_probe("tcp", "127.0.0.1", port) == "ok host-secret"


@contextlib.contextmanager
def _unix_server(address: str) -> Iterator[None]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(address)
    if not address.startswith("\0"):
        os.chmod(address, 0o777)  # world-connectable: only isolation can stop the sandbox
    srv.listen(4)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                conn.sendall(b"daemon")
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield
    finally:
        srv.close()
        if not address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)


def test_abstract_unix_socket_of_host_daemon(sandbox) -> None:
    name = f"corral-test-{secrets.token_hex(4)}"
    with _unix_server("\0" + name):
        sb = sandbox()
        assert probe_in(sb, "unix", name).startswith("err")
        assert host_probe("unix", name, uid=sb.uid) == "ok daemon"  # same uid, outside


def test_pathname_unix_socket_under_run(sandbox) -> None:
    path = f"/run/corral-test-{secrets.token_hex(4)}.sock"
    with _unix_server(path):
        sb = sandbox()
        assert probe_in(sb, "unix", path).startswith("err")
        assert host_probe("unix", path, uid=sb.uid) == "ok daemon"


def test_web_traffic_is_redirected_to_the_proxy_hook(sandbox, outside: Outside) -> None:
    """TCP 80/443 (v4 and v6) lands on the listener the proxy creates via run_in_netns."""
    sb = sandbox(proxy_port=15001, dns_port=15053)
    outside.attach(sb)

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 15001))
        s.listen(8)
        return s

    lsock = sb.run_in_netns(listen)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = lsock.accept()
                conn.sendall(b"proxy")
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        for host, port in ((Outside.V4, 443), (Outside.V4, 80), (Outside.V6, 443)):
            assert probe_in(sb, "tcp", host, port) == "ok proxy"
        assert probe_in(sb, "tcp", Outside.V4, 8080).startswith("err")
        assert outside.contacts() == []
    finally:
        lsock.close()


def test_dns_is_redirected_to_the_stub_hook(sandbox, outside: Outside) -> None:
    sb = sandbox(dns_port=15053)
    outside.attach(sb)

    def bind() -> socket.socket:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 15053))
        return u

    usock = sb.run_in_netns(bind)

    def answer() -> None:
        with contextlib.suppress(OSError):
            data, peer = usock.recvfrom(512)
            usock.sendto(b"stub:" + data, peer)

    threading.Thread(target=answer, daemon=True).start()
    try:
        assert probe_in(sb, "udp", Outside.V4, 53) == "ok stub:probe"
        assert outside.contacts() == []
    finally:
        usock.close()


def test_netns_is_private(sandbox, tmp_path: Path) -> None:
    sb = sandbox()
    inside = probe_in(sb, "readlink", "/proc/self/ns/net")
    assert inside.startswith("ok net:")
    assert inside.split()[1] != os.readlink("/proc/self/ns/net")
