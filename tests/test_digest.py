"""corral._digest: hashlib's digests, without loading OpenSSL on the launch path."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from corral._digest import blake2b, sha256
from corral.audit.events import event_hash


def test_same_digests_as_hashlib() -> None:
    for data in (b"", b"corral", bytes(range(256)) * 300):
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        assert (blake2b(data, digest_size=8).hexdigest()
                == hashlib.blake2b(data, digest_size=8).hexdigest())


def test_audit_event_hash_is_plain_sha256() -> None:
    """External verifiers recompute the chain with any SHA-256: the hash must be exactly that."""
    body = '{"prev":"00","seq":1,"type":"sandbox.exit","data":{"status":0}}'
    assert event_hash(body) == hashlib.sha256(body.encode()).hexdigest()


def test_importing_it_does_not_load_hashlib() -> None:
    code = "import sys, corral._digest; sys.exit('hashlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
