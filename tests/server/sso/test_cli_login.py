"""``corral login`` through the loopback redirect with PKCE (RFC 8252, ``--no-device``), the real
CLI against the real OpenID provider (its browser half driven with httpx), run as root under
sudo: the login is stored 0600 in the sudo caller's config dir, owned by the caller, and written
in the caller's name, so a caller who points ``~/.config/corral`` at a root-owned directory
gets an error, not root writing and chowning there. ``corral token list|revoke``: a user
sees and revokes only their own tokens.

The sudo caller is ``nobody`` (uid 65534) with a home made here: a wrapper lays that home over
its passwd entry in the CLI's process (no user is added to the machine)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_root
from tests.server.sso.conftest import SsoServer, idp_login
from tests.server.sso.test_stepup import cli_login

CALLER = 65534
CORRAL = str(Path(sys.executable).parent / "corral")
# The real CLI with the sudo caller's passwd entry pointing at a test home.
WRAPPER = f"""
import pwd, sys
CALLER = {CALLER}
home = sys.argv.pop(1)
real = pwd.getpwuid
def getpwuid(uid):
    e = real(uid)
    if uid != CALLER:
        return e
    return pwd.struct_passwd((e.pw_name, e.pw_passwd, e.pw_uid, e.pw_gid, e.pw_gecos, home,
                              e.pw_shell))
pwd.getpwuid = getpwuid
from corral.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def homes() -> Iterator[Path]:
    """A directory the caller can traverse (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="corral-sudo-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _home(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir(mode=0o755)
    os.chown(home, CALLER, CALLER)
    return home


def _sudo_env(server: SsoServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CORRAL_TOKEN", "XDG_CONFIG_HOME", "SUDO_UID", "SUDO_GID", "SUDO_USER")}
    env.update(CORRAL_SERVER=server.url, SUDO_UID=str(CALLER), SUDO_GID=str(CALLER),
               SUDO_USER="nobody", BROWSER="true", HOME="/root")
    return env


def _corral(home: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, str(home), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _login_in_browser(server: SsoServer, proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Follow the URL the CLI prints through the provider's form; deliver the answer to the
    CLI's loopback listener; return the CLI's output."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    start = re.search(r"open (\S+)", line)
    assert start, line
    catch = urllib.parse.parse_qs(urllib.parse.urlsplit(start.group(1)).query)["redirect_uri"]
    with httpx.Client(timeout=30) as browser:
        back = idp_login(browser, start.group(1), "alice", catch[0])
        assert "code=" in back, back
        assert browser.get(back).status_code == 200  # the CLI's listener
    out, err = proc.communicate(timeout=60)
    return out, line + err


def test_sudo_login_is_the_callers_and_written_as_the_caller(sso_server: SsoServer,
                                                              homes: Path) -> None:
    require_root()
    env = _sudo_env(sso_server)
    home = _home(homes, "caller")
    out, err = _login_in_browser(sso_server, _corral(home, env, "login", "--no-device"))
    assert "signed in as alice@example.com" in out, (out, err)
    stored = home / ".config" / "corral" / "login.json"
    for path in (home / ".config", stored.parent, stored):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (CALLER, CALLER), path
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    who = _corral(home, env, "whoami")
    out, err = who.communicate(timeout=60)
    assert who.returncode == 0 and out.startswith("alice@example.com (user)"), (out, err)

    # The caller's config dir pointing at a root-owned directory: root neither writes there
    # nor hands it to the caller; the login fails saying where.
    victim = homes / "victim"
    victim.mkdir(mode=0o755)
    trap = _home(homes, "trap")
    (trap / ".config").mkdir()
    os.chown(trap / ".config", CALLER, CALLER)
    (trap / ".config" / "corral").symlink_to(victim)
    proc = _corral(trap, env, "login", "--no-device")
    out, err = _login_in_browser(sso_server, proc)
    assert proc.returncode != 0 and "cannot store the login" in err, (out, err)
    st = victim.stat()
    assert (st.st_uid, st.st_gid) == (0, 0) and list(victim.iterdir()) == []


def _tokens(server: SsoServer, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME",)}
    env.update(CORRAL_SERVER=server.url, CORRAL_TOKEN=token, HOME="/nonexistent")
    return subprocess.run([CORRAL, "token", *argv], env=env, capture_output=True, text=True,
                          timeout=60)


def test_token_list_and_revoke_are_per_user(sso_server: SsoServer) -> None:
    alice, alice2 = cli_login(sso_server, "alice"), cli_login(sso_server, "alice")
    bob = cli_login(sso_server, "bob")
    listed = _tokens(sso_server, alice["token"], "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["tokens"]
    assert sorted(r["id"] for r in rows) == sorted([alice["id"], alice2["id"]])
    assert [r["current"] for r in rows if r["id"] == alice["id"]] == [True]
    # Bob's token id is "no live token of yours" to Alice, exactly like an unknown id, and
    # Bob's token goes on working.
    for other in (bob["id"], 999999):
        done = _tokens(sso_server, alice["token"], "revoke", str(other))
        assert done.returncode == 1 and f"no live token {other} of yours" in done.stderr, done
    with httpx.Client(headers={"Authorization": f"Bearer {bob['token']}"}) as c:
        assert c.get(sso_server.url + "/api/v1/whoami").status_code == 200
    # Her own other login: revoked, and dead at once.
    done = _tokens(sso_server, alice["token"], "revoke", str(alice2["id"]))
    assert done.returncode == 0 and f"revoked token {alice2['id']}" in done.stdout, done
    with httpx.Client(headers={"Authorization": f"Bearer {alice2['token']}"}) as c:
        assert c.get(sso_server.url + "/api/v1/whoami").status_code == 401
    listed = _tokens(sso_server, bob["token"], "list", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["tokens"]] == [bob["id"]]
