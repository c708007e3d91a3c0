"""The web UI in a real browser (Debian's chromium through Playwright), signed in through the
real OpenID provider: every page opens with no CSP violation, a live run's timeline grows
while events are ingested (SSE), approving a held call returns the call's long-poll, a bad
policy shows its file:line error inline, a credential set in the page never shows again,
hostile agent text stays inert. With CORRAL_UI_SCREENSHOTS=DIR each page is saved as PNG."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from tests.server.sso.conftest import chromium
from tests.server.web.conftest import Ui

SHOTS = os.environ.get("CORRAL_UI_SCREENSHOTS")
# Recorded by the page itself (an init script runs outside the page's CSP).
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def _shot(page: Any, name: str, full: bool = True) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full)


def _seed_spend(ui: Ui) -> None:
    from sqlalchemy import select

    from corral.server.models import Agent, Budget, Project, Run, SpendRow, utcnow

    with ui.db().session() as s:
        shop = s.scalar(select(Project).where(Project.name == "shop"))
        agent = s.scalar(select(Agent).where(Agent.name == "claude-code"))
        run = s.scalar(select(Run).where(Run.project_id == shop.id))
        assert shop and agent and run
        now = utcnow()
        for day in range(7):
            for model, cost in (("claude-sonnet-4-5", 410_000 + day * 37_000),
                                ("gpt-4.1", 120_000 + day * 11_000)):
                s.add(SpendRow(run_id=run.id, project_id=shop.id, agent_id=agent.id,
                               provider="anthropic" if "claude" in model else "openai",
                               model=model, reserved_micro_usd=cost, cost_micro_usd=cost,
                               state="settled", at=now - dt.timedelta(days=day, minutes=5)))
        s.add(Budget(scope="project", project_id=shop.id, amount_micro_usd=5_000_000,
                     period="day", created_by="alice@example.com"))
        s.commit()


def _timeline(run: Any) -> None:
    run.ship(("sandbox.create", {"profile": "default", "workspace": "/srv/shop"}),
             ("policy.resolved", {"digest": "ab" * 32, "sources": ["builtin:anthropic", "p.yaml"]}),
             ("exec.start", {"argv": ["claude", "-p", "fix the failing test"],
                             "path": "/usr/bin/claude"}),
             ("dns.query", {"name": "api.anthropic.com", "qtype": "A", "answer": "proxy"}),
             ("proxy.allow", {"host": "api.anthropic.com", "port": 443, "method": "POST",
                              "path": "/v1/messages", "status": 200, "rule": "anthropic.yaml:6",
                              "mode": "inspect"}),
             ("credential.inject", {"binding": "anthropic", "host": "api.anthropic.com"}),
             ("proxy.deny", {"host": "pastebin.com", "port": 443, "method": "POST",
                             "path": "/api/api_post.php", "rule": "default deny"}),
             ("tool.call", {"tool": "shell", "status": "ok"}),
             ("proxy.deny", {"host": "h.example", "rule": "p.yaml:3", "method": "GET",
                             "path": "/" + HOSTILE}))


def test_every_page_live_tail_approval_editor_credential(ui_sqlite: Ui) -> None:
    from playwright.sync_api import sync_playwright

    ui = ui_sqlite
    run = ui.start_run(agent="claude-code", command=["claude", "-p", "fix the failing test"])
    _timeline(run)
    _seed_spend(ui)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                    args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        context.add_init_script(WATCH_CSP)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        page.goto(ui.url + "/sandboxes")
        page.fill("input[name=login]", "alice")
        page.fill("input[name=password]", "x")
        page.click("button[type=submit]")
        page.wait_for_selector("#runs")
        assert page.inner_text("#user-name") == "Alice Liddell"

        # Every page, with a screenshot.
        csrf_policy = "name: p\negress:\n  - host: api.example.com\n    action: inspect\n"
        for path, name, ready in [
                ("/", "overview", "#live-count"), ("/sandboxes", "sandboxes", "#runs"),
                (f"/sandboxes/{run.id}", "run", "#ev-9"), ("/approvals", "approvals", "#queue"),
                ("/policies", "policies", "h1"), ("/policies/shop", "policy-editor", "#problems"),
                ("/projects", "projects", "#projects"), ("/projects/shop", "project", "h1"),
                ("/teams/web", "team", "#members"), ("/credentials", "credentials", "h1"),
                ("/spend", "spend", "#chart-day"), ("/audit?project=shop", "audit", "#events"),
                ("/tokens", "tokens", "h1")]:
            resp = page.goto(ui.url + path)
            assert resp is not None and resp.status == 200, path
            page.wait_for_selector(ready)
            if name == "policy-editor":
                page.fill("#pol-text", csrf_policy)
                page.wait_for_selector("#policy-problems.ok")
            _shot(page, name)
        assert page.evaluate("window.__pwned") is None and not dialogs

        # Hostile text is inert in the browser too.
        page.goto(ui.url + f"/sandboxes/{run.id}")
        assert page.locator("#timeline img").count() == 0
        assert HOSTILE[:20] in page.inner_text("#ev-9")
        assert page.evaluate("window.__pwned") is None

        # The live tail: events posted through the ingest API appear without a reload.
        page.wait_for_selector("#live-state")
        time.sleep(0.3)  # the EventSource connects (nothing else waits on the clock)
        run.ship(("proxy.deny", {"host": "exfil.example", "rule": "default deny",
                                 "method": "PUT", "path": "/upload"}))
        page.wait_for_selector("#ev-10", timeout=10_000)
        assert "exfil.example" in page.inner_text("#ev-10")
        run.ship(*[("exec.start", {"argv": ["make", f"step{i}"], "path": "/usr/bin/make"})
                   for i in range(5)])
        page.wait_for_selector("#ev-15", timeout=10_000)
        _shot(page, "run-live")

        # Approvals: the held call's long-poll returns as soon as the button is pressed.
        page.goto(ui.url + "/approvals")
        held = ui.start_run(agent="claude-code")
        approval = held.ask("shell", {"cmd": "git push origin main", "cwd": "/workspace"},
                            rule="team.yaml:12 (tools.shell: approve)")
        page.wait_for_selector(f"#approve-{approval}", timeout=10_000)  # pushed over SSE
        answer: dict[str, Any] = {}
        poll = held.wait(approval, answer)
        _shot(page, "approvals-queue")
        page.fill(f"#reason-{approval}", "reviewed the diff")
        clicked = time.monotonic()
        page.click(f"#approve-{approval}")
        poll.join(30)
        assert answer["answer"]["status"] == "approved", answer
        assert answer["answer"]["decided_by"] == "alice@example.com"
        assert answer["answer"]["reason"] == "reviewed the diff"
        assert answer["at"] - clicked < 5
        page.wait_for_selector(f"#r-{approval} .notice.ok")

        # A bad policy: the inline error names file:line, and a push is refused the same way.
        page.goto(ui.url + "/policies/shop")
        page.fill("#pol-file", "team.yaml")
        page.fill("#pol-text", "name: p\negress:\n  - host: api.example.com\n"
                  "    action: maybe\n")
        page.wait_for_selector("#policy-problems.error")
        problems = page.inner_text("#policy-problems")
        assert "team.yaml:4" in problems, problems
        _shot(page, "policy-error")
        page.click("#push")
        page.wait_for_selector("#push-result #policy-problems.error")

        # A credential set in the page: stored, and its value is nowhere afterwards.
        secret = "ghp_" + "S3cr3tV4lue" * 3
        page.goto(ui.url + "/credentials?project=shop")
        page.fill("#cred-name", "github")
        page.fill("#cred-value", secret)
        page.click("#cred-save")
        page.wait_for_selector("#cred-result .notice.ok")
        assert page.input_value("#cred-value") == ""
        page.goto(ui.url + "/credentials?project=shop")
        assert "github" in page.inner_text("#creds")
        assert secret not in page.content()

        # A narrow window: the same pages stay usable.
        page.set_viewport_size({"width": 420, "height": 900})
        page.goto(ui.url + f"/sandboxes/{run.id}")
        page.wait_for_selector("#ev-1")
        _shot(page, "run-narrow", full=False)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"

        csp = page.evaluate("window.__csp")
        assert csp == [], csp
        assert not [m for m in console if "Content Security Policy" in m], console
        browser.close()
