"""Config (file:line errors), the credential envelope (property tests), the client's URL rule
(property test over hosts), and migrations that match the models on both backends."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.client import ClientError, check_url
from corral.server.config import ConfigError, load_config
from corral.server.crypto import Kek, KekError, generate_key_file, load_kek


def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("listen: 127.0.0.1:9000\nrelay:\n  allow_private: [10.0.0.0/8, nope]\n")
    with pytest.raises(ConfigError, match=r"server.yaml:3: relay.allow_private: 'nope' "):
        load_config(path)
    path.write_text("listen: 127.0.0.1:9000\ndatabase: x\n")
    with pytest.raises(ConfigError, match=r"server.yaml:2: database: Extra inputs"):
        load_config(path)
    path.write_text("oidc:\n  issuer: not-a-url\n  client_id: c\n")
    with pytest.raises(ConfigError, match=r"server.yaml:2: oidc.issuer: "):
        load_config(path)
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"server.yaml:\d+: \(document\): YAML syntax"):
        load_config(path)
    path.write_text("db: postgresql://u@db/corral\nrelay: {allow_private: [10.1.0.0/16]}\n"
                    "oidc: {issuer: 'https://idp', client_id: corral}\n")
    cfg = load_config(path)
    assert cfg.db_url() == "postgresql://u@db/corral" and cfg.host_port() == ("127.0.0.1", 8470)


def test_db_url_from_env_or_corral_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_DB_URL", raising=False)
    assert load_config(None).db_url() == f"sqlite:///{tmp_path}/server.db"
    monkeypatch.setenv("CORRAL_DB_URL", "postgresql://x@/y")
    assert load_config(None).db_url() == "postgresql://x@/y"


NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,30}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=2048), project=st.integers(1, 10**6), name=NAMES,
       other=st.integers(1, 10**6), other_name=NAMES, flip=st.integers(0, 10**6))
def test_envelope_binds_project_and_name(value: bytes, project: int, name: str, other: int,
                                         other_name: str, flip: int) -> None:
    kek, kek2 = Kek(os.urandom(32)), Kek(os.urandom(32))
    sealed = kek.seal(project, name, value)
    assert kek.open(project, name, sealed) == value
    assert len(value) < 8 or value not in sealed.ciphertext  # short ones occur by chance
    if (other, other_name) != (project, name):  # moved to another project or name: refused
        with pytest.raises(KekError):
            kek.open(other, other_name, sealed)
    for field in ("ciphertext", "wrapped_key", "nonce", "key_nonce"):
        data = bytearray(getattr(sealed, field))
        if data:
            data[flip % len(data)] ^= 1 << (flip % 8)
            with pytest.raises(KekError):
                kek.open(project, name, sealed._replace(**{field: bytes(data)}))
    rewrapped = kek.rewrap(project, name, sealed, kek2)
    assert rewrapped.ciphertext == sealed.ciphertext and rewrapped.kek_id == kek2.id
    assert kek2.open(project, name, rewrapped) == value
    with pytest.raises(KekError, match="wrapped by KEK"):
        kek.open(project, name, rewrapped)


def test_kek_file_rules(tmp_path: Path) -> None:
    made = tmp_path / "home" / "server.kek"
    kek = load_kek(made, create=True)
    assert made.stat().st_mode & 0o777 == 0o600 and load_kek(made).id == kek.id
    made.chmod(0o644)
    with pytest.raises(KekError, match="readable by others"):
        load_kek(made)
    short = tmp_path / "short"
    short.write_text("c2hvcnQ=\n")
    short.chmod(0o600)
    with pytest.raises(KekError, match="32 bytes"):
        load_kek(short)
    with pytest.raises(KekError, match="cannot read"):
        load_kek(tmp_path / "absent")


def test_a_loaded_kek_is_reused_only_while_its_file_is_unchanged(tmp_path: Path) -> None:
    import base64
    import os

    path = tmp_path / "server.kek"
    generate_key_file(path)
    first = load_kek(path)
    assert load_kek(path) is first  # unchanged: the key already read
    # rewritten in place (same inode, same size): the next call reads the new key
    other = base64.b64encode(os.urandom(32)).decode() + "\n"
    path.write_text(other)
    second = load_kek(path)
    assert second.id != first.id and load_kek(path) is second
    # replaced by rename: a new inode
    fresh = tmp_path / "fresh.kek"
    generate_key_file(fresh)
    fresh_id = load_kek(fresh).id
    os.replace(fresh, path)
    assert load_kek(path).id == fresh_id
    # loosened after it was loaded: refused at once, not served from memory
    path.chmod(0o640)
    with pytest.raises(KekError, match="readable by others"):
        load_kek(path)
    path.chmod(0o600)
    # swapped for a symlink to a good key: refused (O_NOFOLLOW), cached key or not
    target = tmp_path / "target.kek"
    generate_key_file(target)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(KekError):
        load_kek(path)


def test_kek_rotate_rewraps_every_credential(db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import select

    from corral.server.config import ServerConfig
    from corral.server.crypto import Sealed
    from corral.server.db import Database
    from corral.server.local import rotate_kek
    from corral.server.models import Credential, Project, Team

    old_file, new_file = tmp_path / "kek", tmp_path / "new.kek"
    generate_key_file(old_file)
    generate_key_file(new_file)
    old = load_kek(old_file)
    db = Database(db_url)
    with db.session() as s:
        team = Team(name="t")
        s.add(team)
        s.flush()
        project = Project(name="p", team_id=team.id)
        s.add(project)
        s.flush()
        for n in range(3):
            sealed = old.seal(project.id, f"c{n}", f"v{n}".encode())
            s.add(Credential(project_id=project.id, name=f"c{n}", ciphertext=sealed.ciphertext,
                             nonce=sealed.nonce, wrapped_key=sealed.wrapped_key,
                             key_nonce=sealed.key_nonce, kek_id=sealed.kek_id, updated_by="t"))
    assert rotate_kek(db, ServerConfig(db=db_url, kek_file=old_file), new_file) == 3
    current = load_kek(old_file)  # the KEK file now holds the new key
    assert current.id == load_kek(new_file).id != old.id
    assert load_kek(tmp_path / "kek.old").id == old.id
    with db.session() as s:
        for row in s.scalars(select(Credential)):
            sealed = Sealed(row.ciphertext, row.nonce, row.wrapped_key, row.key_nonce, row.kek_id)
            assert current.open(row.project_id, row.name, sealed) == f"v{row.name[1:]}".encode()
    db.dispose()


HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
)


def _netloc(host: str) -> tuple[str, bool]:
    """``host`` as a URL's netloc, and whether it names this machine only."""
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    return (f"[{host}]" if ":" in host else host), loop


@settings(max_examples=300, deadline=None)
@given(host=HOSTS, port=st.integers(1, 65535))
def test_plain_http_only_on_loopback(host: str, port: int) -> None:
    netloc, loop = _netloc(host)
    url = f"http://{netloc}:{port}"
    if loop:
        check_url(url)
    else:
        with pytest.raises(ClientError, match="only on loopback"):
            check_url(url)
    check_url(f"https://{netloc}:{port}")  # TLS is fine anywhere


@settings(max_examples=200, deadline=None)
@given(host=HOSTS, port=st.integers(1, 65535))
def test_an_http_issuer_only_on_loopback(host: str, port: int) -> None:
    """The IdP signs who a user is: its keys and discovery are fetched in clear only where no
    network is crossed, in the server config file and on the command line alike."""
    from corral.server.config import OidcConfig

    netloc, loop = _netloc(host)
    issuer = f"http://{netloc}:{port}/realms/acme"
    if loop:
        assert OidcConfig(issuer=issuer, client_id="corral").issuer == issuer
    else:
        with pytest.raises(ValueError, match="http:// only on a loopback address"):
            OidcConfig(issuer=issuer, client_id="corral")
    assert OidcConfig(issuer=f"https://{netloc}:{port}/", client_id="c").issuer == \
        f"https://{netloc}:{port}"


def test_an_http_issuer_elsewhere_stops_the_server(tmp_path: Path) -> None:
    from tests.server.conftest import cli

    path = tmp_path / "server.yaml"
    path.write_text("oidc: {issuer: 'http://idp.example.com', client_id: corral}\n")
    with pytest.raises(ConfigError, match=r"server.yaml:1: oidc.issuer: .*http:// only on a "
                                          r"loopback address"):
        load_config(path)
    env = {"CORRAL_HOME": str(tmp_path), "CORRAL_DB_URL": f"sqlite:///{tmp_path / 'db'}"}
    from tests.server.conftest import free_port

    listen = f"127.0.0.1:{free_port()}"  # were the issuer taken, the server would serve here
    done = cli("server", "--listen", listen, "--oidc-issuer", "http://idp.example.com",
               "--oidc-client-id", "corral", env=env, check=False)
    assert done.returncode != 0 and "--oidc-issuer: issuer 'http://idp.example.com': http:// " \
        "only on a loopback address" in done.stdout + done.stderr, done


def test_client_refuses_credentials_in_url() -> None:
    for url in ("https://u:p@h", "https://h/?t=x", "ftp://h", "https://"):
        with pytest.raises(ClientError):
            check_url(url)


def test_migrations_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from corral.server.db import Database
    from corral.server.models import Base

    db = Database(db_url)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.dispose()
    assert diff == []
