from __future__ import annotations

import os
import stat

import pytest

from corral.credentials.store import CredentialStore
from corral.errors import CorralError, UserInputError


def test_set_get_list_remove_modes(corral_env: dict[str, str]) -> None:
    store = CredentialStore()
    store.set("gh-token", "s3cret\nwith newline")
    assert store.get("gh-token") == "s3cret\nwith newline"
    assert store.names() == ["gh-token"]
    mode = stat.S_IMODE(os.stat(store.root / "gh-token").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert store.remove("gh-token") and not store.remove("gh-token")
    assert store.get("gh-token") is None


@pytest.mark.parametrize("name", ["../x", ".hidden", "A", "a/b", ""])
def test_bad_names(corral_env: dict[str, str], name: str) -> None:
    with pytest.raises(UserInputError):
        CredentialStore().set(name, "v")


def test_loose_mode_and_symlink_refused(corral_env: dict[str, str], tmp_path: object) -> None:
    store = CredentialStore()
    store.set("a", "v")
    os.chmod(store.root / "a", 0o644)
    with pytest.raises(CorralError, match="unsafe"):
        store.get("a")
    os.symlink("/etc/hostname", store.root / "b")
    with pytest.raises(CorralError):
        store.get("b")
