"""The web UI is accessible (issue 16: labelled controls, keyboard navigation, contrast, usable
at 1280 px and in a narrow window), checked in a real browser by axe-core, the accessibility
engine from the npm registry (pinned by tests/a11y/package.json and its lock file, installed
at first use), not by a list of our own rules.

Every page is opened signed in as a team admin with something on it (a run's timeline, a held
call with its decide form, a policy with versions, a credential, spend) at 1280 px and at
420 px, and axe's WCAG 2 A and AA rules must find nothing: form controls without a label,
buttons and links without a name, text under the contrast ratio, a page without a landmark or
a title, duplicate ids, and so on. A held call is then approved with the keyboard alone.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tools
from tests.server.sso.conftest import chromium
from tests.server.web.conftest import Ui

A11Y_DIR = Path(__file__).resolve().parents[2] / "a11y"
AXE = A11Y_DIR / "node_modules" / "axe-core" / "axe.min.js"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
# The page's CSP does not apply to what the test evaluates (CDP), so axe runs unchanged.
RUN_AXE = """async (tags) => {
  const r = await axe.run(document, {runOnly: {type: 'tag', values: tags},
                                     resultTypes: ['violations']});
  return r.violations.map(v => ({id: v.id, help: v.help,
                                 nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') +
                                                                ': ' + n.failureSummary)}));
}"""


@pytest.fixture(scope="session")
def axe_source() -> str:
    require_tools("node", "npm")
    if not AXE.is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=A11Y_DIR, check=True,
                       capture_output=True, timeout=300)
    return AXE.read_text()


def _seed(ui: Ui) -> tuple[str, str]:
    """A run with a timeline, a second policy version, a credential, spend and a budget;
    returns (the run's id, a held call's approval id)."""
    import httpx
    from sqlalchemy import select

    from corral.server.local import create_token
    from corral.server.models import Agent, Budget, Project, SpendRow, utcnow

    run = ui.start_run(agent="claude-code", command=["claude", "-p", "fix the test"])
    run.ship(("sandbox.create", {"profile": "default", "workspace": "/srv/shop"}),
             ("exec.start", {"argv": ["claude", "-p", "fix the test"], "path": "/usr/bin/claude"}),
             ("dns.query", {"name": "api.anthropic.com", "qtype": "A", "answer": "proxy"}),
             ("proxy.allow", {"host": "api.anthropic.com", "port": 443, "method": "POST",
                              "path": "/v1/messages", "status": 200, "rule": "p.yaml:6"}),
             ("credential.inject", {"binding": "anthropic", "host": "api.anthropic.com"}),
             ("proxy.deny", {"host": "pastebin.com", "port": 443, "method": "POST",
                             "path": "/api", "rule": "default deny"}),
             ("tool.call", {"tool": "shell", "status": "ok"}))
    held = ui.start_run(agent="claude-code")
    approval = held.ask("shell", {"cmd": "git push origin main"}, rule="team.yaml:12")
    db = ui.db()
    try:
        owner = create_token(db, name="owner", role="owner", team=None,
                             ttl=dt.timedelta(hours=1))
    finally:
        db.dispose()
    with httpx.Client(base_url=ui.url + "/api/v1", timeout=30,
                      headers={"Authorization": f"Bearer {owner}"}) as c:
        for host in ("api.anthropic.com", "api.openai.com"):
            text = f"name: p\negress:\n  - host: {host}\n    action: inspect\n"
            resp = c.post("/projects/shop/policies", json={"filename": "p.yaml", "text": text})
            assert resp.status_code == 201, resp.text
        resp = c.put("/projects/shop/credentials/anthropic", json={"value": "sk-test-value"})
        assert resp.status_code in (200, 201), resp.text
    with ui.db().session() as s:
        shop = s.scalar(select(Project).where(Project.name == "shop"))
        agent = s.scalar(select(Agent).where(Agent.name == "claude-code"))
        assert shop is not None and agent is not None
        for day in range(3):
            s.add(SpendRow(run_id=run.id, project_id=shop.id, agent_id=agent.id,
                           provider="anthropic", model="claude-sonnet-4-5",
                           reserved_micro_usd=90_000, cost_micro_usd=90_000 + day,
                           state="settled", at=utcnow() - dt.timedelta(days=day, minutes=5)))
        s.add(Budget(scope="project", project_id=shop.id, amount_micro_usd=5_000_000,
                     period="day", created_by="alice@example.com"))
        s.commit()
    return run.id, approval


def _pages(run: str) -> list[tuple[str, str]]:
    return [("/", "#live-count"), ("/sandboxes", "#runs"), (f"/sandboxes/{run}", "#ev-7"),
            ("/approvals", "#queue li.approval"), ("/policies", "h1"),
            ("/policies/shop", "#problems"), ("/policies/shop/diff?policy=p&version=2", "h1"),
            ("/policies/org", "h1"), ("/projects", "#projects"), ("/projects/shop", "h1"),
            ("/teams", "h1"), ("/teams/web", "#members"), ("/credentials?project=shop", "#creds"),
            ("/spend", "#chart-day"), ("/audit?project=shop", "#events"), ("/tokens", "h1"),
            ("/projects/no-such-project", "#message")]


def _violations(page: Any, axe: str) -> list[dict[str, Any]]:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(axe)
    return list(page.evaluate(RUN_AXE, WCAG))


def test_every_page_passes_axe_and_an_approval_is_decided_by_keyboard(
        ui_sqlite: Ui, axe_source: str) -> None:
    from playwright.sync_api import sync_playwright

    ui = ui_sqlite
    run, approval = _seed(ui)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                    args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        page.goto(ui.url + "/")
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", "x")
        page.click("button[type=submit]")
        page.wait_for_selector("#live-count")

        found: dict[str, list[dict[str, Any]]] = {}
        for width in (1280, 420):
            page.set_viewport_size({"width": width, "height": 860})
            for path, ready in _pages(run):
                page.goto(ui.url + path)
                page.wait_for_selector(ready)
                if path == "/policies/shop":  # the editor's inline error is checked too
                    page.fill("#pol-text", "name: p\negress:\n  - host: x\n    action: maybe\n")
                    page.wait_for_selector("#policy-problems.error")
                if bad := _violations(page, axe_source):
                    found[f"{path} @{width}px"] = bad
        assert not found, found

        # Keyboard only: from the skip link to the held call's Approve button.
        page.set_viewport_size({"width": 1280, "height": 860})
        page.goto(ui.url + "/approvals")
        page.wait_for_selector(f"#approve-{approval}")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == f"reason-{approval}":
                break
        else:
            raise AssertionError("the reason field is not reachable with Tab")
        page.keyboard.type("checked by keyboard")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == f"approve-{approval}"
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#r-{approval} .notice.ok")
        browser.close()
    with ui.db().session() as s:
        from corral.server.models import Approval

        row = s.get(Approval, approval)
        assert row is not None and row.status == "approved", row
        assert row.reason == "checked by keyboard"
