"""The root-only credential store: one file per secret under ``state_dir()/credentials``.

Invariants:
- The directory is 0700 and every secret file 0600, owned by the user running corral (root);
  files are written to a temporary name with O_EXCL and renamed, so a reader never sees half a
  secret and a pre-planted symlink is never followed (O_NOFOLLOW on reads too).
- Names are ``[a-z0-9][a-z0-9._-]*`` (no path separators, no dot-files).
- Values are never logged or echoed; ``names()`` lists names only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from corral import dirs
from corral.errors import CorralError, UserInputError

__all__ = ["CredentialStore", "validate_name"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserInputError(
            f"invalid credential name {name!r}: use lowercase letters, digits, '.', '_' or '-'"
        )
    return name


class CredentialStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or dirs.state_dir() / "credentials"

    def _dir(self) -> Path:
        dirs.ensure_state_dir()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            self.root.chmod(0o700)
        return self.root

    def set(self, name: str, value: str) -> None:
        validate_name(name)
        if not value:
            raise UserInputError(f"refusing to store an empty secret for {name!r}")
        root = self._dir()
        tmp = root / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, value.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, root / name)

    def get(self, name: str) -> str | None:
        validate_name(name)
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CorralError(f"cannot read credential {name!r}: {err.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077 or st.st_uid != os.geteuid():
                raise CorralError(
                    f"credential {name!r} has unsafe ownership or mode; "
                    f"run `corral creds set {name}` again"
                )
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode()

    def remove(self, name: str) -> bool:
        validate_name(name)
        try:
            (self.root / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _NAME.fullmatch(p.name))
