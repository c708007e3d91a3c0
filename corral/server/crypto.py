"""Credential encryption: AES-256-GCM envelopes under a key-encryption key (KEK).

Invariants:
- Each secret has its own random 256-bit data key; the value is sealed with it under a fresh
  96-bit nonce, with ``project_id/name`` as associated data, so a ciphertext moved to another
  project or name fails to open. The data key is sealed by the KEK (its own nonce, with the
  same associated data); only wrapped keys are stored.
- The KEK is 32 random bytes, base64, in ``kek_file`` (or ``$CORRAL_HOME/server.kek``,
  created 0600 on first start). A KEK file readable by group or others is refused.
- ``load_kek`` reads the file again whenever it may have changed: a key is reused only while
  the file's identity and metadata (device, inode, size, mode, owner, mtime and ctime to the
  nanosecond) are those it was read with, and the mode check runs on every call, so a
  replaced, rewritten or loosened file is seen by the next call (the relay loads the KEK for
  every request it injects).
- ``kek_id`` (first 16 hex digits of sha256 of the KEK) is stored with each row so a wrong key
  is reported as such, not as corrupt data; ``rotate`` rewraps every data key in one
  transaction and never touches the sealed values.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.errors import CorralError

__all__ = ["Kek", "KekError", "Sealed", "generate_key_file", "load_kek"]


class KekError(CorralError):
    """A missing, malformed, exposed or wrong key-encryption key."""


class Sealed(NamedTuple):
    ciphertext: bytes
    nonce: bytes
    wrapped_key: bytes
    key_nonce: bytes
    kek_id: str


def _aad(project_id: int, name: str) -> bytes:
    return f"corral-credential/v1/{project_id}/{name}".encode()


class Kek:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KekError("the KEK must be 32 bytes")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(key).hexdigest()[:16]

    def seal(self, project_id: int, name: str, value: bytes) -> Sealed:
        aad = _aad(project_id, name)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce, key_nonce = os.urandom(12), os.urandom(12)
        ciphertext = AESGCM(data_key).encrypt(nonce, value, aad)
        wrapped = self._aead.encrypt(key_nonce, data_key, aad)
        return Sealed(ciphertext, nonce, wrapped, key_nonce, self.id)

    def _data_key(self, project_id: int, name: str, sealed: Sealed) -> bytes:
        if sealed.kek_id != self.id:
            raise KekError(f"credential {name} is wrapped by KEK {sealed.kek_id}, "
                           f"the server has {self.id}")
        try:
            return self._aead.decrypt(sealed.key_nonce, sealed.wrapped_key,
                                      _aad(project_id, name))
        except InvalidTag:
            raise KekError(f"credential {name}: data key does not open (tampered?)") from None

    def open(self, project_id: int, name: str, sealed: Sealed) -> bytes:
        data_key = self._data_key(project_id, name, sealed)
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext,
                                            _aad(project_id, name))
        except InvalidTag:
            raise KekError(f"credential {name}: value does not open (tampered?)") from None

    def rewrap(self, project_id: int, name: str, sealed: Sealed, new: Kek) -> Sealed:
        """The same sealed value with its data key wrapped by ``new``."""
        data_key = self._data_key(project_id, name, sealed)
        key_nonce = os.urandom(12)
        wrapped = new._aead.encrypt(key_nonce, data_key, _aad(project_id, name))
        return sealed._replace(wrapped_key=wrapped, key_nonce=key_nonce, kek_id=new.id)


def generate_key_file(path: Path) -> None:
    """Write a new KEK (32 random bytes, base64) to ``path``, 0600, never over an existing one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(32)).decode() + "\n")


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns,
            st.st_ctime_ns)


def _checked(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KekError(f"{path}: the KEK is not a regular file")
    if st.st_mode & 0o077:
        raise KekError(f"{path}: the KEK is readable by others (mode "
                       f"{stat.S_IMODE(st.st_mode):o}); chmod 600 it")


_loaded: dict[str, tuple[tuple[int, ...], Kek]] = {}


def load_kek(path: Path, *, create: bool = False) -> Kek:
    if create and not path.exists():
        # another replica or process may have made it first: then use theirs
        with contextlib.suppress(FileExistsError):
            generate_key_file(path)
    with contextlib.suppress(OSError):
        st = os.stat(path, follow_symlinks=False)
        _checked(path, st)
        cached = _loaded.get(str(path))
        if cached is not None and cached[0] == _signature(st):
            return cached[1]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise KekError(f"{path}: cannot read the KEK: {err.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        _checked(path, st)
        text = f.read()
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KekError(f"{path}: the KEK is not base64") from None
    if len(key) != 32:
        raise KekError(f"{path}: the KEK must be 32 bytes (base64), not {len(key)}")
    kek = Kek(key)
    if len(_loaded) > 16:
        _loaded.clear()
    _loaded[str(path)] = (_signature(st), kek)
    return kek
