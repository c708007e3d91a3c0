"""SHA-256 and BLAKE2b for the launch path, from the interpreter's own C modules.

``hashlib`` loads OpenSSL on import (~4 ms), which every ``corral run`` would pay for a few
small digests: the policy cache key and digest, the audit chain's event hashes, the proxy
helper's socket key and code stamp. CPython builds the same algorithms into small modules
of its own; the digests are identical (tests compare them with ``hashlib``). Where a build
lacks them (``_sha256`` is ``_sha2`` from Python 3.12 on), ``hashlib`` serves, correctly and
a little slower to import.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hashlib import blake2b, sha256
else:
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - Python 3.12+ or a build without it
        from hashlib import sha256
    try:
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover
        from hashlib import blake2b

__all__ = ["blake2b", "sha256"]
