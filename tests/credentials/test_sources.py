from __future__ import annotations

from pathlib import Path

import pytest

from corral.credentials.sources import SecretError, read_source
from corral.credentials.store import CredentialStore


def test_store_and_bare(corral_env: dict[str, str]) -> None:
    CredentialStore().set("tok", "v1")
    assert read_source("store:tok", trusted=False) == "v1"
    assert read_source("tok", trusted=False) == "v1"
    with pytest.raises(SecretError, match="corral creds set nope"):
        read_source("nope", trusted=False)


@pytest.mark.parametrize("spec", ["env:HOME", "file:/etc/hostname", "cmd:echo hi"])
def test_untrusted_sources_refused(spec: str) -> None:
    with pytest.raises(SecretError, match="config dir"):
        read_source(spec, trusted=False)


def test_trusted_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_T_SECRET", "from-env")
    assert read_source("env:CORRAL_T_SECRET", trusted=True) == "from-env"
    (tmp_path / "s").write_text("from-file\n")
    assert read_source(f"file:{tmp_path / 's'}", trusted=True) == "from-file"
    assert read_source("cmd:printf 'from-cmd\\n'", trusted=True) == "from-cmd"
    with pytest.raises(SecretError, match="status 3") as err:
        read_source("cmd:echo leaked; exit 3", trusted=True)
    assert "leaked" not in str(err.value)
