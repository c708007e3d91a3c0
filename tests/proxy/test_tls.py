"""The per-sandbox CA: name constraints, IP SANs, ALPN, and no key material in what leaves."""

from __future__ import annotations

import ipaddress
import ssl

import pytest
from cryptography import x509

from corral.proxy.tls import CertificateAuthority


def _verify(ca: CertificateAuthority, host: str, leaf_pem: bytes, tmp_path: object) -> None:
    """Verify ``leaf_pem`` for ``host`` with OpenSSL against only the sandbox CA."""
    import socket
    import threading

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(ca, leaf_pem, tmp_path))
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server_ctx.wrap_socket(a, server_side=True).close()
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client_ctx.wrap_socket(b, server_hostname=host).close()
    finally:
        b.close()
        thread.join()


def _files(ca: CertificateAuthority, leaf_pem: bytes, tmp_path: object) -> tuple[str, str]:
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    base = Path(str(tmp_path))
    (base / "chain.pem").write_bytes(leaf_pem)
    key = ca._leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (base / "key.pem").write_bytes(key)
    return str(base / "chain.pem"), str(base / "key.pem")


def test_name_constraints_limit_the_ca(tmp_path: object) -> None:
    ca = CertificateAuthority(["api.example.com", "*.corp.example", "10.0.0.7"])
    assert ca.name_constrained
    ext = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    _verify(ca, "api.example.com", ca.leaf_pem("api.example.com"), tmp_path)
    _verify(ca, "a.b.corp.example", ca.leaf_pem("a.b.corp.example"), tmp_path)
    _verify(ca, "10.0.0.7", ca.leaf_pem("10.0.0.7"), tmp_path)
    # A leaf the CA was tricked into minting for another host does not verify.
    try:
        _verify(ca, "bank.example.org", ca.leaf_pem("bank.example.org"), tmp_path)
    except ssl.SSLCertVerificationError as err:
        assert "subtree" in str(err) or "name constraint" in str(err).lower()
    else:
        raise AssertionError("a leaf outside the name constraints verified")


def test_wildcard_policy_means_no_constraints() -> None:
    assert not CertificateAuthority(["*"]).name_constrained


def test_leaf_details_and_no_key_in_pem() -> None:
    ca = CertificateAuthority(["*"])
    leaf = x509.load_pem_x509_certificate(ca.leaf_pem("192.0.2.1"))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert b"PRIVATE KEY" not in ca.cert_pem and "PRIVATE" not in repr(ca)
    ctx = ca.server_context("api.example.com")
    assert ctx is ca.server_context("api.example.com")  # cached


def test_an_upstream_ca_given_inline_or_as_a_file_verifies_the_same(tmp_path: object) -> None:
    """A rule's ``tls_ca`` is a PEM file or the PEM text (a server's policy): both trust that
    CA for the upstream's handshake, and the context without it refuses the same server."""
    import socket
    import threading
    from pathlib import Path

    from corral.proxy.tls import UpstreamContexts

    ca = CertificateAuthority(["upstream.test"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_files(ca, ca.leaf_pem("upstream.test"), tmp_path))
    ca_file = Path(str(tmp_path)) / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    contexts = UpstreamContexts()

    def handshake(client_ctx: ssl.SSLContext) -> None:
        a, b = socket.socketpair()

        def serve() -> None:
            try:
                server_ctx.wrap_socket(a, server_side=True).close()
            except (ssl.SSLError, OSError):
                a.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            client_ctx.wrap_socket(b, server_hostname="upstream.test").close()
        finally:
            b.close()
            thread.join()

    handshake(contexts.get(ca.cert_pem.decode()))
    handshake(contexts.get(ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(contexts.get(None))
