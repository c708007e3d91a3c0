"""The web audit view and its JSONL export filter by the human who launched the run (issue 14:
"the audit view and ``audit list --project`` can filter by human"; the CLI side is in
tests/server/test_launcher_identity.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import httpx

from tests.server.web.conftest import Ui

CAROL = "carol@example.com"


def test_the_audit_view_filters_by_human(ui: Ui) -> None:
    alices = ui.start_run(agent="claude-code")
    carols = ui.start_run(human=CAROL)
    alices.ship(("proxy.deny", {"host": "alice-only.example", "method": "GET", "path": "/"}))
    carols.ship(("proxy.deny", {"host": "carol-only.example", "method": "GET", "path": "/"}))
    with httpx.Client(timeout=30) as alice:
        ui.login(alice, "alice")
        both = alice.get(ui.url + "/audit", params={"project": "shop"}).text
        assert "alice-only.example" in both and "carol-only.example" in both
        page = alice.get(ui.url + "/audit", params={"project": "shop", "human": CAROL})
        assert page.status_code == 200
        assert "carol-only.example" in page.text and "alice-only.example" not in page.text
        assert f'name="human" value="{CAROL}"' in page.text  # the filter stays in the form
        export = alice.get(ui.url + "/audit/export.jsonl",
                           params={"project": "shop", "human": "alice@example.com"})
        rows = [json.loads(line) for line in export.text.splitlines()]
        assert rows and {(r["human"], r["agent"]) for r in rows} == \
            {("alice@example.com", "claude-code")}
        assert "carol-only.example" not in export.text
        nobody = alice.get(ui.url + "/audit", params={"project": "shop",
                                                      "human": "dave@example.com"}).text
        assert "No event matches." in nobody
