"""The per-sandbox certificate authority and the TLS contexts built from it.

Invariants:
- One ephemeral EC P-256 CA per sandbox, created in memory when the service is built; its
  private key is never written to disk nor exported (only ``cert_pem`` is). Leaf contexts load
  key material through anonymous memory files (``memfd``), never through a path on disk.
- The CA is short-lived and, when every inspected host is a literal name or IP (no ``*``),
  carries critical name constraints with dNSName subtrees only: exactly the inspected names
  (``*.x`` as ``x``), or the reserved name ``invalid`` (RFC 6761) when all of them are IP
  literals, so a leaked CA cannot mint trust for any other DNS name. It never carries an
  iPAddress subtree: BoringSSL (Bun, so Claude Code) rejects every chain under one
  (``UNSUPPORTED_CONSTRAINT_TYPE``). IP-literal leaves are therefore not constrained by the CA:
  the price is that a leaked CA could mint a leaf for any IP literal, trusted only inside that
  one sandbox and only for the CA's lifetime; which IPs the agent reaches is still the policy's
  decision, per request.
- Leaves: one per host, cached; IP-literal hosts get an IP SAN; ALPN offers only http/1.1 so
  the HTTP/1.1 inspector always understands what the client speaks.
- Upstream verification uses the system trust store plus the rule's ``tls_ca`` (if any),
  with hostname checking on; contexts are cached per ``tls_ca``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["NO_DNS_NAME", "CertificateAuthority", "UpstreamContexts", "name_constraints_for"]

CA_LIFETIME = datetime.timedelta(days=30)
LEAF_LIFETIME = datetime.timedelta(days=7)
_BACKDATE = datetime.timedelta(hours=1)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# RFC 6761 reserves it: no real name lies under it, so a CA permitted only this can mint none.
NO_DNS_NAME = "invalid"


def name_constraints_for(hosts: Iterable[str]) -> x509.NameConstraints | None:
    """Permitted dNSName subtrees covering ``hosts``; None when some host is ``*`` (no
    constraint fits). IP literals add no subtree (see the module invariants)."""
    dns: set[str] = set()
    any_host = False
    for host in hosts:
        if host == "*":
            return None
        any_host = True
        if not _is_ip(host):
            # "*.example.com" -> subtree "example.com" (also admits the apex: X.509 cannot
            # express "subdomains only"; the policy still decides per request).
            dns.add(host[2:] if host.startswith("*.") else host)
    if not any_host:
        return None
    subtrees: list[x509.GeneralName] = [x509.DNSName(d) for d in sorted(dns or {NO_DNS_NAME})]
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def _memfd(name: str, data: bytes) -> tuple[str, int]:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return f"/proc/self/fd/{fd}", fd


class CertificateAuthority:
    def __init__(self, inspected_hosts: Iterable[str] = ("*",), label: str = "corral") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} sandbox CA")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
        )
        constraints = name_constraints_for(inspected_hosts)
        if constraints is not None:
            builder = builder.add_extension(constraints, critical=True)
        self.cert = builder.sign(self._key, hashes.SHA256())
        self.cert_pem: bytes = self.cert.public_bytes(serialization.Encoding.PEM)
        self.name_constrained = constraints is not None
        self._leaves: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show key material
        return f"<CertificateAuthority {self.cert.subject.rfc4514_string()}>"

    def leaf_pem(self, host: str) -> bytes:
        now = datetime.datetime.now(datetime.UTC)
        san: x509.GeneralName = (
            x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
        )
        cert = (
            x509.CertificateBuilder()
            # An IP leaf has no CN: verifiers check a CN against dNSName constraints.
            .subject_name(
                x509.Name([])
                if _is_ip(host)
                else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
            )
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A cached TLS server context presenting a leaf for ``host``."""
        with self._lock:
            ctx = self._leaves.get(host)
            if ctx is not None:
                return ctx
        chain = self.leaf_pem(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        cert_path, cert_fd = _memfd("leaf", chain)
        key_path, key_fd = _memfd("key", self._leaf_key_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        finally:
            os.close(cert_fd)
            os.close(key_fd)
        with self._lock:
            self._leaves[host] = ctx
        return ctx


class UpstreamContexts:
    """Client contexts that verify upstream servers; one per distinct extra CA file.

    Build them (``preload``) before the proxy drops privileges: the CA files may be root-only.
    """

    def __init__(self) -> None:
        self._cache: dict[Path | str | None, ssl.SSLContext] = {}

    def preload(self, cas: Iterable[Path | str | None]) -> None:
        for ca in {None, *cas}:
            self.get(ca)

    def get(self, tls_ca: Path | str | None) -> ssl.SSLContext:
        """``tls_ca``: a PEM file, or PEM text (a rule that gives its CA inline)."""
        ctx = self._cache.get(tls_ca)
        if ctx is None:
            ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])
            if isinstance(tls_ca, str):
                ctx.load_verify_locations(cadata=tls_ca)
            elif tls_ca is not None:
                ctx.load_verify_locations(cafile=str(tls_ca))
            self._cache[tls_ca] = ctx
        return ctx
