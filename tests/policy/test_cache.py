"""The compiled-policy cache: used on the launch path without pydantic, never trusted blindly."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from corral.policy import api, resolve

POLICY = "name: a\negress:\n  - host: x.example.test\n    action: direct\n"


@pytest.fixture
def policy_file(tmp_path: Path, corral_env: dict[str, str]) -> str:
    Path(corral_env["CORRAL_HOME"]).mkdir(mode=0o700)
    path = tmp_path / "a.yaml"
    path.write_text(POLICY)
    return str(path)


def _run(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_second_resolve_skips_pydantic(policy_file: str, corral_env: dict[str, str]) -> None:
    # ``dataclasses`` (inspect, ast, ...) and ``hashlib`` (OpenSSL) are launch-path costs too:
    # the cached form is named tuples and the cache key a C-module SHA-256.
    code = ("import sys; from corral.policy import resolve; "
            f"rp = resolve([{policy_file!r}, 'builtin:pypi']); "
            "print('pydantic' in sys.modules, 'yaml' in sys.modules, "
            "'typer' in sys.modules or 'rich' in sys.modules, "
            "'dataclasses' in sys.modules or 'hashlib' in sys.modules, "
            "rp.decide_connect('x.example.test', 443).action)")
    first = _run(code, corral_env)
    assert first == "True True False True direct"  # first: full load, writes the cache
    assert _run(code, corral_env) == "False False False False direct"  # then: compiled only
    Path(policy_file).write_text(POLICY.replace("direct", "inspect"))
    assert _run(code, corral_env) == "True True False True inspect"  # edited file: new key


def test_cached_policy_equals_fresh_and_digest_is_sha256(policy_file: str) -> None:
    import hashlib
    import json

    fresh = resolve([policy_file, "builtin:github"], use_cache=False)
    resolve([policy_file, "builtin:github"])  # writes the cache
    cached = resolve([policy_file, "builtin:github"])
    assert cached is not fresh and cached.rules == fresh.rules
    assert cached.credentials == fresh.credentials and cached.exec == fresh.exec
    assert type(cached.rules[0]) is type(fresh.rules[0])
    body = json.dumps(fresh.canonical(), sort_keys=True, separators=(",", ":")).encode()
    assert cached.digest == fresh.digest == hashlib.sha256(body).hexdigest()
    # records serialise as objects (a named tuple passed as is would be a JSON list)
    assert isinstance(fresh.canonical()["exec"], dict)
    assert all(isinstance(r, dict) for r in fresh.canonical()["rules"])


def test_cache_format_is_in_the_key(policy_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = api._read_inputs([policy_file])
    key = api._key(inputs)
    monkeypatch.setattr(api, "_FORMAT", b"corral-policy-cache/1")
    assert api._key(inputs) != key


def test_corrupt_cache_falls_back(policy_file: str) -> None:
    resolve([policy_file])
    for entry in api.cache_dir().glob("*.pickle"):
        entry.write_bytes(b"not a pickle")
    assert resolve([policy_file]).decide_connect("x.example.test", 443).action == "direct"


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def test_cache_not_loaded_from_a_loose_directory(policy_file: str, tmp_path: Path) -> None:
    key = api._key(api._read_inputs([policy_file]))
    folder = api.cache_dir()
    folder.mkdir(mode=0o700)
    marker = tmp_path / "unpickled"
    (folder / f"{key}.pickle").write_bytes(pickle.dumps(_Marker(str(marker))))
    folder.chmod(0o777)
    resolve([policy_file])
    assert not marker.exists()
    # Positive control: the same bytes in a private directory are read (so the check matters).
    folder.chmod(0o700)
    (folder / f"{key}.pickle").write_bytes(pickle.dumps(_Marker(str(marker))))
    resolve([policy_file])
    assert marker.exists()


def test_no_cache_without_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "absent"))
    resolve(["builtin:npm"])
    assert not (tmp_path / "absent").exists()
