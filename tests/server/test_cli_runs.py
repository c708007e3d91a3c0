"""The CLI against a real ``corral server`` process: ``sandbox list|kill --project``,
``audit list|verify --project`` (with this host's own heads compared), and
``approvals list|approve|deny --project``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corral.client import ServerRun
from tests.server.chains import local_chain
from tests.server.conftest import Served, cli


def test_cli_runs_audit_approvals(spawn_server: Any, db_url: str, tmp_path: Path) -> None:
    url, _ = spawn_server(db_url)
    server = Served(url, db_url, Path())
    owner = server.token()
    home = tmp_path / "state"
    env = {"CORRAL_TOKEN": owner, "CORRAL_SERVER": url, "CORRAL_HOME": str(home)}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    cli("agent", "create", "release-bot", "--project", "shop", env=env)
    home.mkdir(exist_ok=True)
    events = local_chain(home / "audit.db", "sb-cli", 40)  # this host's own trail
    run = ServerRun.register(url, owner, "shop", host="ci-7", sandbox="sb-cli",
                             policy_digest="12" * 32, human="alice@example.com",
                             agent="release-bot", command=["claude", "-p", "fix it"])
    assert run.ship_events(events) == len(events)

    listed = json.loads(cli("sandbox", "list", "--project", "shop", "--json", env=env).stdout)
    assert [r["id"] for r in listed["runs"]] == [run.id]
    table = cli("sandbox", "list", "--project", "shop", env=env).stdout
    assert run.id in table and "claude -p fix it" in table and "alice@example.com" in table

    out = cli("audit", "list", "--project", "shop", "--human", "alice@example.com", "--agent",
              "release-bot", "--type", "credential.*", "--json", env=env).stdout.splitlines()
    assert len(out) == 20 and json.loads(out[0])["data"]["binding"] == "github"
    assert cli("audit", "list", "--project", "shop", "--human", "bob@example.com",
               env=env).stdout.strip() == "no matching events"
    assert cli("audit", "verify", "--project", "shop", env=env).stdout.startswith(
        f"ok: {len(events)} events in 1 runs of shop")

    ident = run.request_approval("bash", {"command": "make deploy"})
    pending = cli("approvals", "list", "--project", "shop", env=env).stdout
    assert ident in pending and "make deploy" in pending
    done = cli("approvals", "deny", ident, "--project", "shop", "--reason", "not today",
               env=env)
    assert done.stdout.startswith(f"denied {ident}: bash")
    assert run.wait_decision(ident, 5).reason == "not today"
    again = cli("approvals", "approve", ident, "--project", "shop", env=env, check=False)
    assert again.returncode == 1 and "already denied" in again.stderr

    killed = cli("sandbox", "kill", run.id, "--reason", "over budget", env=env)
    assert "kill requested" in killed.stdout
    assert run.heartbeat().kill_reason == "over budget"
    run.end(137, "killed from the server: over budget")
    assert cli("sandbox", "list", "--project", "shop", env=env).stdout.count("\n") == 1
    assert "ended" in cli("sandbox", "list", "--project", "shop", "--all", env=env).stdout

    # This host's trail differs from the server's copy: verify says so and fails.
    import sqlite3

    con = sqlite3.connect(home / "audit.db")
    con.execute("UPDATE events SET hash='ff' || substr(hash, 3) WHERE sandbox='sb-cli' AND "
                "seq=?", (len(events),))
    con.commit()
    con.close()
    bad = cli("audit", "verify", "--project", "shop", env=env, check=False)
    assert bad.returncode == 1
    assert f"differs from this host's trail of sandbox sb-cli at seq {len(events)}" in bad.stderr
    wrong = cli("sandbox", "kill", "sb-local", "--project", "shop", env=env, check=False)
    assert wrong.returncode == 2 and "not a server run id" in wrong.stderr
