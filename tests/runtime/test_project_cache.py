"""The compiled project policy cache (``corral.runtime.project_cache``) and the stored login
(``corral.runtime.project.stored_login``) on the ``--project`` launch path.

The cache must make a second launch skip loading the policy (no pydantic, no YAML) and yet
never let anything through that a fresh load would refuse: the host paths a project policy
names are judged again on every hit (a symlink made since, e.g. by an earlier run's agent in the
workspace, is caught), and a change of local input, host config or CA file is a miss. The
stored login is read only from the invoking user's own 0600 regular file, for its own server.
The server is a loopback HTTP server answering what the test likes (``Lying``)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.errors import CorralError
from corral.runtime import project, project_cache
from tests.conftest import require_root
from tests.runtime.test_project_trust import Lying, lying  # noqa: F401 (a fixture)


class Compiles:
    """Counts full loads (``project._compile``) behind the cache."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = project._compile

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(project, "_compile", counted)


def _pull(url: str, local: list[str] | None = None, workspace: str | None = None
          ) -> project.ProjectPolicy:
    t = project.Target(url, "crl_x", "shop", None)
    return project.project_policy(t, local or [], None, workspace)


@pytest.fixture
def env(corral_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("SUDO_UID", raising=False)
    return corral_env


def test_second_launch_is_a_hit_and_equal(lying: Lying, env: dict[str, str],  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                          ) -> None:
    compiles = Compiles(monkeypatch)
    lying.serve("name: evil\negress:\n  - host: api.example.com\n    action: inspect\n"
                "limits: {memory: 1GiB}\n")
    first = _pull(lying.url)
    second = _pull(lying.url)
    assert compiles.count == 1
    assert second.policy.digest == first.policy.digest and second.digest == first.digest
    assert second.policy.rules == first.policy.rules
    folder = project_cache.cache_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.glob("*.pickle"))

    # A local -p file narrows: its bytes are in the key (a change is a miss), and the
    # narrowed policy is what the hit returns.
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("name: narrow\nlimits: {memory: 512MiB}\n")
    assert _pull(lying.url, [str(narrow)]).policy.limits.memory == 512 * 1024**2
    narrow.write_text("name: narrow\nlimits: {memory: 256MiB}\n")
    assert _pull(lying.url, [str(narrow)]).policy.limits.memory == 256 * 1024**2
    assert _pull(lying.url, [str(narrow)]).policy.limits.memory == 256 * 1024**2
    assert compiles.count == 3
    # The host's config.yaml (project_allow_private) is in the key too.
    Path(env["CORRAL_CONFIG"], "config.yaml").write_text("project_allow_private: []\n")
    _pull(lying.url)
    assert compiles.count == 4
    # A new digest from the server: a miss.
    lying.serve("name: evil\negress:\n  - host: api.example.org\n    action: inspect\n")
    assert [r.host for r in _pull(lying.url).policy.rules] == ["api.example.org"]
    assert compiles.count == 5


def test_paths_are_judged_again_on_a_hit(lying: Lying, env: dict[str, str],  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                         ) -> None:
    """A path accepted when the policy was cached becomes a symlink out of the workspace (an
    agent can make one there): the next launch refuses, cache or not."""
    compiles = Compiles(monkeypatch)
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    lying.serve(f"name: evil\nfiles:\n  read: [{ws}/data]\n")
    _pull(lying.url, workspace=str(ws))
    _pull(lying.url, workspace=str(ws))
    assert compiles.count == 1
    (ws / "data").rmdir()
    (ws / "data").symlink_to("/root")
    with pytest.raises(CorralError, match=r"files\.read: .*/data is outside"):
        _pull(lying.url, workspace=str(ws))
    assert compiles.count == 1  # refused on the hit itself


def test_a_missing_ca_file_is_a_miss(lying: Lying, env: dict[str, str],  # noqa: F811
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.proxy import CertificateAuthority

    compiles = Compiles(monkeypatch)
    ca = CertificateAuthority(label="a project's upstream")
    pem = ca.cert_pem.decode().strip().replace("\n", "\n      ")
    lying.serve(f"name: evil\negress:\n  - host: api.example.com\n    action: inspect\n"
                f"    tls_ca: |\n      {pem}\n")
    first = _pull(lying.url)
    (ca_file,) = {r.tls_ca for r in first.policy.rules if r.tls_ca}
    ca_file.unlink()
    again = _pull(lying.url)
    assert compiles.count == 2 and ca_file.exists()
    assert {r.tls_ca for r in again.policy.rules if r.tls_ca} == {ca_file}
    ca_file.chmod(0o644)  # not root-only any more: not trusted from the cache either
    _pull(lying.url)
    assert compiles.count == 3


def test_a_cache_entry_others_can_write_is_ignored(lying: Lying, env: dict[str, str],  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    compiles = Compiles(monkeypatch)
    lying.serve("name: evil\negress:\n  - host: api.example.com\n    action: inspect\n")
    _pull(lying.url)
    (entry,) = project_cache.cache_dir().glob("*.pickle")
    entry.chmod(0o666)
    _pull(lying.url)
    assert compiles.count == 2


# -- the stored login ---------------------------------------------------------------------

KINDS = ["file", "symlink", "dir", "fifo"]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), mode=st.integers(0, 0o777),
       owner=st.sampled_from(["self", "other"]), same_server=st.booleans(),
       content=st.sampled_from(["ok", "junk", "no-token"]))
def test_stored_login_only_from_the_users_own_file(kind: str, mode: int, owner: str,
                                                   same_server: bool, content: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the file is, its token is used only when it is a regular file (no symlink)
    owned by the invoking user, readable by no one else, made for this server; a file that is
    there but fails the rules is refused (125), never silently used."""
    server = "http://127.0.0.1:4711"
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.delenv("SUDO_UID", raising=False)
        monkeypatch.delenv("CORRAL_TOKEN", raising=False)
        monkeypatch.setenv("XDG_CONFIG_HOME", tmp)
        folder = Path(tmp, "corral")
        folder.mkdir()
        path = folder / "login.json"
        body = {"ok": json.dumps({"server": server, "token": "crl_secret"}),
                "junk": "{not json", "no-token": json.dumps({"server": server})}[content]
        real = Path(tmp, "real.json")
        real.write_text(body)
        if kind == "file":
            real.rename(path)
        elif kind == "symlink":
            path.symlink_to(real)
        elif kind == "dir":
            path.mkdir()
        else:
            os.mkfifo(path)
        target = path if kind != "symlink" else real
        os.chmod(target, mode)
        if owner == "other":
            os.chown(target, 65534, 65534)
        url = server if same_server else "http://127.0.0.1:4712"
        safe = kind == "file" and owner == "self" and not mode & 0o077
        if not safe:
            with pytest.raises(CorralError) as err:
                project.target("shop", None, url)
            assert err.value.exit_code == 125
            return
        if content != "ok" or not same_server:
            with pytest.raises(CorralError, match="no token"):
                project.target("shop", None, url)
            return
        assert project.target("shop", None, url).token == "crl_secret"
        assert project.target("shop", None, None).url == server  # the login's own server
        monkeypatch.setenv("CORRAL_TOKEN", "crl_env")
        assert project.target("shop", None, url).token == "crl_env"  # the env wins


def test_under_sudo_only_the_callers_own_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under sudo the stored login is the caller's: a root-owned one in their config dir (their
    ``~/.config/corral`` symlinked to root's) is refused, never used as theirs."""
    import pwd

    require_root()  # the rule under test is root's reading of the sudo caller's file
    server, caller = "http://127.0.0.1:4711", 65534
    with tempfile.TemporaryDirectory() as tmp:
        real = pwd.getpwuid
        entry = real(caller)
        monkeypatch.setattr(pwd, "getpwuid", lambda uid: pwd.struct_passwd(
            (*entry[:5], tmp, entry[6])) if uid == caller else real(uid))
        monkeypatch.setenv("SUDO_UID", str(caller))
        monkeypatch.delenv("CORRAL_TOKEN", raising=False)
        folder = Path(tmp, ".config", "corral")
        folder.mkdir(parents=True)
        login = folder / "login.json"
        login.write_text(json.dumps({"server": server, "token": "crl_roots"}))
        login.chmod(0o600)
        with pytest.raises(CorralError, match=f"owned by uid {caller}") as err:
            project.target("shop", None, server)
        assert err.value.exit_code == 125
        # the server commands' client (corral approvals, policy push, ...) reads it the same way
        from corral.cli.remote import client

        with pytest.raises(CorralError, match=f"owned by uid {caller}"):
            client(server)
        os.chown(login, caller, caller)
        assert project.target("shop", None, server).token == "crl_roots"
        assert client(server).token == "crl_roots"
