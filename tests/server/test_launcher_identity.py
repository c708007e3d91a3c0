"""``corral run --project`` as a human: the stored login of ``corral login`` is the launcher's
token, the run and every event the server stores name that human (IdP subject and email) and
the agent, ``audit list --human`` filters by them; and ``corral audit push`` completes the
trail of a run whose server was away at its end (or at its start) with the launching user's
own token, while another user's token cannot (against a real ``corral server`` process, on
SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from proxy.conftest import Outside, outside  # noqa: F401 (a fixture)

from tests.conftest import require_root, require_tools
from tests.server.conftest import cli
from tests.server.test_launcher import (  # noqa: F401 (corral_server is a fixture)
    Server,
    _local_events,
    _popen,
    _run,
    _runs,
    _server_events,
    _setup,
    _wait,
    corral_server,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

ALICE, BOB = "alice@corral.test", "bob@corral.test"


def _user(server: Server, kek: Path, email: str, subject: str) -> str:
    """A member of team web signed in through SSO: its login token, made by the server's own
    functions (as /auth/callback and the device flow make it)."""
    from sqlalchemy import select

    from corral.server.crypto import load_kek
    from corral.server.db import Database
    from corral.server.models import Membership, Team, User
    from corral.server.oidc.accounts import issue_login_token

    db = Database(server.db_url)
    try:
        with db.session() as session:
            team = session.scalar(select(Team).where(Team.name == "web"))
            assert team is not None
            user = User(email=email, idp_subject=subject, name=email.split("@")[0])
            session.add(user)
            session.flush()
            session.add(Membership(team_id=team.id, user_id=user.id, role="member",
                                   source="idp"))
            _row, secret = issue_login_token(session, load_kek(kek), user,
                                             name="corral login on test", step_up=False,
                                             refresh_token=None)
    finally:
        db.dispose()
    return secret


def _login_env(env: dict[str, str], tmp: Path, server: Server, token: str,
               email: str) -> dict[str, str]:
    """The launcher's env with only a stored login (as ``corral login`` writes it)."""
    config = tmp / f"xdg-{email.split('@')[0]}"
    (config / "corral").mkdir(parents=True, exist_ok=True)
    login = config / "corral" / "login.json"
    fd = os.open(login, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"server": server.url, "token": token, "id": 0, "email": email,
                   "expires_at": "later"}, out)
    out_env = {k: v for k, v in env.items() if k != "CORRAL_TOKEN"}
    out_env["XDG_CONFIG_HOME"] = str(config)
    return out_env


def _alice_launches(server: Server, world: Outside, corral_env: dict[str, str], kek: Path,
                    tmp: Path, monkeypatch: pytest.MonkeyPatch,
                    subject: str) -> tuple[dict[str, str], dict[str, str]]:
    """A real launch as Alice: the project set up, nothing lent by the test's environment;
    (the project's env, the env with only Alice's stored login)."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    for name in ("CORRAL_TOKEN", "SUDO_UID", "SUDO_USER", "SUDO_GID"):
        monkeypatch.delenv(name, raising=False)
    env = _setup(server, world, corral_env, tmp)
    return env, _login_env(env, tmp, server, _user(server, kek, ALICE, subject), ALICE)


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    """The test process's environment must not lend the launcher a token or a sudo caller."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("CORRAL_TOKEN", "SUDO_UID", "SUDO_USER", "SUDO_GID")}
    return {**full, **env}


def _push(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from tests.server.conftest import VENV_BIN

    return subprocess.run([str(VENV_BIN / "corral"), "audit", "push"], env=_clean_env(env),
                          capture_output=True, text=True, timeout=120)


def test_run_names_its_human(corral_server: Server, outside: Outside,  # noqa: F811
                             corral_env: dict[str, str], kek_file: Path,
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, alice = _alice_launches(corral_server, outside, corral_env, kek_file, tmp_path,
                                 monkeypatch, "sub-alice-7f3a")
    ip = outside.ip
    script = (f"curl -s -o /dev/null -w 'inspect=%{{http_code}}\\n' https://{ip}/echo; "
              f"curl -s -o /dev/null -w 'deny=%{{http_code}}\\n' https://{ip}/other")
    done = _run(alice, "--project", "shop", "--agent", "bot", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inspect=200", "deny=403"], done
    (run,) = _runs(env, "--all")
    assert run["human"] == ALICE and run["agent"] == "bot" and run["status"] == "ended"

    events = _server_events(env, run["id"])  # read with the owner's token
    types = [e["type"] for e in events]
    assert "proxy.deny" in types and "credential.inject" in types, types
    assert {(e["human"], e["human_subject"], e["agent"]) for e in events} == \
        {(ALICE, "sub-alice-7f3a", "bot")}
    listed = cli("audit", "list", "--project", "shop", "--human", ALICE, "--json", env=env)
    assert len(listed.stdout.splitlines()) == len(events)
    assert all(json.loads(line)["human_subject"] == "sub-alice-7f3a"
               for line in listed.stdout.splitlines())
    other = cli("audit", "list", "--project", "shop", "--human", BOB, "--json", env=env)
    assert other.stdout == ""

    # A registration the server refuses stops the run (the command may have started while it
    # was asked, as the offline rules allow): 125, and the command does not go on.
    done = _run(alice, "--project", "shop", "--agent", "nobody", "--", "sh", "-c",
                "sleep 5; echo went-on")
    assert done.returncode == 125 and "no agent 'nobody'" in done.stderr, done.stderr
    assert "went-on" not in done.stdout
    assert len(_runs(env, "--all")) == 1

    # The stored login must be the user's alone: one others can read is refused, not used.
    login = Path(alice["XDG_CONFIG_HOME"], "corral", "login.json")
    login.chmod(0o644)
    done = _run(alice, "--project", "shop", "--", "true")
    assert done.returncode == 125 and "mode 0600" in done.stderr, done.stderr
    login.chmod(0o600)
    # A login made for another server is never sent to this one.
    moved = {**alice, "CORRAL_SERVER": "http://127.0.0.1:9"}
    done = _run(moved, "--project", "shop", "--", "true")
    assert done.returncode == 125 and "no token for http://127.0.0.1:9" in done.stderr


def test_audit_push_completes_a_run(corral_server: Server, outside: Outside,  # noqa: F811
                                    corral_env: dict[str, str], kek_file: Path,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, alice = _alice_launches(corral_server, outside, corral_env, kek_file, tmp_path,
                                 monkeypatch, "sub-alice")
    bob = _login_env(env, tmp_path, corral_server,
                     _user(corral_server, kek_file, BOB, "sub-bob"), BOB)
    ip = outside.ip
    ws = tmp_path / "ws"
    ws.mkdir()
    loop = (f"curl -s -o /dev/null https://{ip}/a; touch /workspace/one; "
            "while [ ! -e /workspace/go ]; do sleep 0.1; done; "
            f"for i in 1 2 3; do curl -s -o /dev/null https://{ip}/b$i; done")
    proc = _popen(_clean_env(alice), "--project", "shop", "--agent", "bot", "--workspace",
                  str(ws), "--", "sh", "-c", loop)
    try:
        (live,) = _wait(lambda: _runs(env), "the run to be live")
        _wait(lambda: (ws / "one").exists(), "the first request")
        corral_server.stop()  # down before the run ends, and it stays down
        (ws / "go").touch()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "waits for 'corral audit push'" in err, err
    (left,) = Path(env["CORRAL_HOME"], "leftovers").glob("*.json")
    leftover = json.loads(left.read_text())
    assert leftover["run"] == live["id"] and leftover["ended"] and "token" not in left.read_text()
    local = _local_events(env, live["sandbox"])

    corral_server.start()
    before = _server_events(env, live["id"])
    assert len(before) < len(local)
    # Bob is in the same team, but it is not his run: refused, nothing added, leftover kept.
    pushed = _push(bob)
    assert pushed.returncode == 1 and "launched by someone else" in pushed.stdout, pushed
    assert _server_events(env, live["id"]) == before and left.exists()
    # Alice's own token completes it: the whole trail once, the run ended, the leftover gone.
    pushed = _push(alice)
    assert pushed.returncode == 0 and "ended" in pushed.stdout, pushed
    shipped = _server_events(env, live["id"])
    assert [(e["seq"], e["hash"]) for e in shipped] == local
    assert {e["human"] for e in shipped} == {ALICE}
    (run,) = _runs(env, "--all")
    assert run["status"] == "ended" and run["exit_status"] == 0
    assert not left.exists()
    assert _push(alice).stdout.startswith("no leftovers")
    assert cli("audit", "verify", "--project", "shop", env=env).returncode == 0

    # Down at the start (the policy pulled before is fresh): the run goes on unregistered; the
    # push registers it as Alice's run and ships it all.
    corral_server.stop()
    done = _run(alice, "--project", "shop", "--agent", "bot", "--", "sh", "-c", "echo offline")
    assert done.returncode == 0 and done.stdout == "offline\n", done.stderr
    (left,) = Path(env["CORRAL_HOME"], "leftovers").glob("*.json")
    sandbox = json.loads(left.read_text())["sandbox"]
    corral_server.start()
    pushed = _push(alice)
    assert pushed.returncode == 0 and "registered as run" in pushed.stdout, pushed
    (later,) = [r for r in _runs(env, "--all") if r["sandbox"] == sandbox]
    assert later["human"] == ALICE and later["agent"] == "bot" and later["status"] == "ended"
    assert [(e["seq"], e["hash"]) for e in _server_events(env, later["id"])] == \
        _local_events(env, sandbox)
    assert not list(Path(env["CORRAL_HOME"], "leftovers").glob("*.json"))


# Inside the sandbox: every process's environment and argv, and every file of the places a
# launcher could leave one (the system's own read-only trees aside), searched for a token.
HUNT = ("{ env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline; grep -rIaoh 'crl_[A-Za-z0-9_-]*' "
        "/etc /tmp /run /var /home /root /workspace /opt /srv /mnt /dev/shm; } 2>/dev/null "
        "| tr '\\0' '\\n' | grep -o 'crl_[A-Za-z0-9_-]\\{43\\}' | sort -u; echo hunted")


def test_no_token_is_visible_inside_the_sandbox(corral_server: Server,  # noqa: F811
                                                 outside: Outside,  # noqa: F811
                                                 corral_env: dict[str, str], kek_file: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's sandbox token (and the human's login token) live in the launcher and its
    proxy only: the agent finds neither anywhere it can look."""
    from sqlalchemy import select

    from corral.server.db import Database
    from corral.server.models import Token

    env, alice = _alice_launches(corral_server, outside, corral_env, kek_file, tmp_path,
                                 monkeypatch, "sub-alice-hunt")
    done = _run(alice, "--project", "shop", "--agent", "bot", "--", "sh", "-c", HUNT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hunted"], done.stdout
    (run,) = _runs(env, "--all")
    db = Database(corral_server.db_url)
    try:
        with db.session() as s:
            kinds = list(s.scalars(select(Token.kind).where(Token.run_id == run["id"])))
    finally:
        db.dispose()
    assert kinds == ["sandbox"]  # the run had one, and it was not to be found
