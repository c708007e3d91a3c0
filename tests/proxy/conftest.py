"""Fixtures for proxy tests: an outside host in its own network namespace and a real proxy.

The outside host is a TLS + plain HTTP server (``outside_server.py``) with its own test CA,
reachable only over a veth pair from the host namespace (10.250.N.0/30). The proxy is started
the way ``corral run`` starts it (``start_proxy``: ``corral.runtime.proxyproc.ProxyProcess``,
through the pre-started helper when one answers, privileges dropped, events through the audit
relay) on loopback; tests drive it with real clients and assert the audit events it emitted,
so a request that never reached the proxy cannot pass.
Everything is removed in finalizers.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets as pysecrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_subnet, require_root, require_tools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.audit.events import validate
from corral.policy import resolve
from corral.proxy import agent_env, trust_bundle
from corral.runtime.proxyproc import ProxyProcess

NAMES = ("api.corral.test", "other.corral.test", "git.corral.test", "ws.corral.test")
NOBODY = (65534, 65534)


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def _make_ca(tmp: Path, ip: str) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral test outside CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in NAMES]
    sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "outside-ca.pem", tmp / "outside-cert.pem", tmp / "outside-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for p in paths:
        p.chmod(0o644)
    return paths


@dataclass
class Outside:
    ns: str
    ip: str
    host_ip: str
    ca: Path
    root: Path


@pytest.fixture(scope="session")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    require_root()
    require_tools("ip", "git", "curl", "setpriv")
    tmp = tmp_path_factory.mktemp("outside")
    tmp.chmod(0o755)
    tag = pysecrets.token_hex(3)
    ns = f"corral-t-{tag}"
    veth_h, veth_n = f"crt{tag}h", f"crt{tag}n"
    git_root = tmp / "git"
    git_root.mkdir()
    work = tmp / "work"
    _sh("git", "init", "-q", "-b", "main", str(work))
    (work / "README").write_text("hello from the outside\n")
    _sh("git", "-C", str(work), "add", "README")
    _sh(
        "git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t",
        "commit", "-q", "-m", "init",
    )
    _sh("git", "clone", "-q", "--bare", str(work), str(git_root / "repo.git"))
    proc = None
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_n)
        _sh("ip", "link", "set", veth_n, "netns", ns)
        with free_subnet("10.250") as octet:  # one module's session fixture each, at once
            host_ip, ns_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
            _sh("ip", "addr", "add", f"{host_ip}/30", "dev", veth_h)
        ca, cert, key = _make_ca(tmp, ns_ip)
        _sh("ip", "link", "set", veth_h, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", veth_n)
        _sh("ip", "-n", ns, "link", "set", veth_n, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = Path(__file__).with_name("outside_server.py")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(server), str(cert), str(key),
             str(git_root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((ns_ip, 443), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        yield Outside(ns, ns_ip, host_ip, ca, tmp)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        _sh("ip", "link", "del", veth_h, check=False)
        _sh("ip", "netns", "del", ns, check=False)


class ListSink:
    """An audit sink that checks every event against the audit registry."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, /, **fields: Any) -> None:
        validate(event_type, fields)
        self.events.append((event_type, fields))

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for t, f in self.events
            if t == kind and all(f.get(k) == v for k, v in match.items())
        ]


def start_proxy(
    policy: Any,
    listen: list[socket.socket],
    dns: list[socket.socket] | None = None,
    *,
    secrets: dict[str, Any] | None = None,
    audit: Any = None,
    run_as: tuple[int, int] = NOBODY,
    overrides: dict[str, list[str]] | None = None,
    upstream_proxy: str | None = None,
    zygote: bool | None = None,
) -> tuple[ProxyProcess, bytes]:
    """Start a proxy the production way; returns it (``.pid``, ``.stop()``) and its CA PEM.
    ``zygote=False`` for a policy object the pre-started helper cannot unpickle."""
    proc = ProxyProcess(policy, zygote=zygote)
    try:
        proc.configure(secrets or {}, upstream_proxy=upstream_proxy, resolve_overrides=overrides)
        pem = proc.ca_pem()
        proc.start(listen, dns or [], run_as=run_as, audit=audit)
    except BaseException:
        proc.kill()
        raise
    return proc, pem


@dataclass
class RunningProxy:
    port: int
    policy: Any
    sink: ListSink
    bundle: Path
    env: dict[str, str]
    handle: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture
def make_proxy(
    outside: Outside, tmp_path: Path, corral_env: dict[str, str]
) -> Iterator[ProxyFactory]:
    started: list[RunningProxy] = []

    def factory(
        policy_yaml: str,
        secrets: dict[str, Any] | None = None,
        *,
        run_as: tuple[int, int] = NOBODY,
        overrides: dict[str, list[str]] | None = None,
        policy: Any = None,
        upstream_proxy: str | None = None,
    ) -> RunningProxy:
        text = policy_yaml.replace("OUTSIDE_CA", str(outside.ca)).replace(
            "OUTSIDE_IP", outside.ip
        )
        path = tmp_path / f"policy{len(started)}.yaml"
        path.write_text(text)
        rp = policy if policy is not None else resolve([str(path)], use_cache=False)
        sink = ListSink()
        names = {n: [outside.ip] for n in NAMES}
        names.update(overrides or {})
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        try:
            handle, pem = start_proxy(rp, [listener], secrets=secrets, audit=sink, run_as=run_as,
                                      overrides=names, upstream_proxy=upstream_proxy,
                                      zygote=False if policy is not None else None)
        finally:
            listener.close()
        bundle = tmp_path / f"bundle{len(started)}.pem"
        bundle.write_bytes(trust_bundle(pem))
        env = agent_env(rp, port, bundle_path=str(bundle))
        proxy = RunningProxy(port, rp, sink, bundle, env, handle)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.handle.stop()


def curl(proxy: RunningProxy, *args: str, timeout: int = 20) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **proxy.env}
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), *args],
        capture_output=True, text=True, env=env, timeout=timeout + 5,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


assert shutil  # imported for tools checks in tests
