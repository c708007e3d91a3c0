"""The server's budget ledger (corral/server/budgets.py) and its API, on SQLite and PostgreSQL:
concurrent reservations from threads (through the real API) and from processes (on the
database) never overshoot; expiry charges and frees a reservation whose launcher went away;
day/week/month windows reset on the UTC calendar; budgets on org, team, project, agent and run
all apply; authz (a member cannot raise a budget, 404 outside the team, step-up)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import threading
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.server.budgets import DbLedger, expire, renew, reserve, settle, window_spend
from corral.server.db import Database
from corral.server.models import AdminEvent, Agent, Budget, Project, Run, SpendRow, Team
from corral.spend import MICRO, LedgerUnavailable, Refusal, Reservation
from corral.spend import Budget as SpendBudget
from tests.server.conftest import Served, cli

UTC = dt.UTC


def _world(url: str, *, runs: int = 1, agent: bool = True) -> tuple[list[str], dict[str, int]]:
    """A team, two projects (one in another team), an agent and ``runs`` runs; their ids."""
    db = Database(url)
    with db.session() as s:
        team, other = Team(name="web"), Team(name="other")
        s.add_all([team, other])
        s.flush()
        shop, far = Project(name="shop", team_id=team.id), Project(name="far", team_id=other.id)
        s.add_all([shop, far])
        s.flush()
        bot = Agent(project_id=shop.id, name="bot")
        s.add(bot)
        s.flush()
        ids = []
        for i in range(runs):
            run = Run(id=str(uuid.uuid4()), project_id=shop.id,
                      agent_id=bot.id if agent else None, human="a@example.com", host="h",
                      sandbox=f"s{i}", policy_digest="0" * 64)
            s.add(run)
            ids.append(run.id)
        far_run = Run(id=str(uuid.uuid4()), project_id=far.id, human="b@example.com",
                      host="h", sandbox="far", policy_digest="0" * 64)
        s.add(far_run)
        found = {"team": team.id, "other": other.id, "shop": shop.id, "far": far.id,
                 "bot": bot.id}
    db.dispose()
    ids.append(far_run.id)
    return ids, found


def _budget(url: str, usd: float, period: str = "month", **where: Any) -> None:
    scope = next(iter(where)).removesuffix("_id") if where else "org"
    db = Database(url)
    with db.session() as s:
        s.add(Budget(scope=scope, period=period, amount_micro_usd=round(usd * MICRO),
                     created_by="test", **where))
    db.dispose()


def test_every_scope_applies_and_names_itself(db_url: str) -> None:
    (run, other, far), ids = _world(db_url, runs=2)
    db = Database(db_url)
    try:
        for scope, where, label in [
            ("org", {}, "org budget"),
            ("team", {"team_id": ids["team"]}, "team web budget"),
            ("project", {"project_id": ids["shop"]}, "project shop budget"),
            ("agent", {"agent_id": ids["bot"]}, "agent shop/bot budget"),
            ("run", {"run_id": run}, f"run {run} budget"),
        ]:
            with db.session() as s:
                s.query(Budget).delete()
                s.query(SpendRow).delete()
                s.add(Budget(scope=scope, period="day", amount_micro_usd=10, created_by="t",
                             **where))
            got = reserve(db, run, 10)
            assert isinstance(got, Reservation), scope
            refused = reserve(db, run, 1)
            assert isinstance(refused, Refusal) and refused.budget.label == label, scope
            assert refused.spent == 0 and refused.reserved == 10 and refused.needed == 1
            # another run of the project: refused by every scope but the run's own
            assert isinstance(reserve(db, other, 1), Reservation if scope == "run" else Refusal)
            # a run in another team: only the org budget reaches it
            assert isinstance(reserve(db, far, 1), Refusal if scope == "org" else Reservation)
    finally:
        db.dispose()


def test_settle_renew_expire(db_url: str) -> None:
    (run, _), _ids = _world(db_url)
    _budget(db_url, 1.0)  # org, month
    db = Database(db_url)
    t0 = dt.datetime(2026, 5, 10, 12, tzinfo=UTC)
    try:
        a = reserve(db, run, 600_000, now=t0)
        assert isinstance(a, Reservation)
        assert isinstance(reserve(db, run, 500_000, now=t0), Refusal)
        assert settle(db, run, a.id, 100_000, usage={"model": "m", "output_tokens": 7})
        assert not settle(db, run, a.id, 0)  # idempotent: the first settle counts
        assert not renew(db, run, a.id)  # settled: nothing to renew
        b = reserve(db, run, 900_000, now=t0)
        assert isinstance(b, Reservation)
        # its launcher went away: renewed at t0 + 60 s, then never again
        assert renew(db, run, b.id, now=t0 + dt.timedelta(seconds=60))
        assert expire(db, ttl=120, now=t0 + dt.timedelta(seconds=179)) == 0
        assert expire(db, ttl=120, now=t0 + dt.timedelta(seconds=181)) == 1
        with db.session() as s:
            row = s.get(SpendRow, b.id)
            assert row is not None and row.state == "settled" and row.flagged
            assert row.cost_micro_usd == 900_000  # charged in full: fail closed on money
        assert not renew(db, run, b.id)
        refused = reserve(db, run, 1, now=t0)
        assert isinstance(refused, Refusal) and refused.reserved == 0
        assert refused.spent == 1_000_000
        # a late settle corrects the expired charge once
        assert settle(db, run, b.id, 200_000)
        assert not settle(db, run, b.id, 900_000)
        assert isinstance(reserve(db, run, 700_000, now=t0), Reservation)
        assert isinstance(reserve(db, run, 1, now=t0), Refusal)
    finally:
        db.dispose()


@pytest.mark.parametrize(("period", "now", "later", "resets"), [
    ("day", "2026-05-10T23:59:59", "2026-05-11T00:00:00", "2026-05-11T00:00:00"),
    ("week", "2026-05-10T23:00:00", "2026-05-11T00:00:00", "2026-05-11T00:00:00"),  # Sun->Mon
    ("month", "2026-12-31T23:00:00", "2027-01-01T00:00:00", "2027-01-01T00:00:00"),
])
def test_period_resets(db_url: str, period: str, now: str, later: str, resets: str) -> None:
    (run, _), ids = _world(db_url)
    _budget(db_url, 1.0, period, project_id=ids["shop"])
    db = Database(db_url)
    t0 = dt.datetime.fromisoformat(now).replace(tzinfo=UTC)
    t1 = dt.datetime.fromisoformat(later).replace(tzinfo=UTC)
    try:
        first = reserve(db, run, MICRO, now=t0)
        assert isinstance(first, Reservation)
        settle(db, run, first.id, MICRO)
        refused = reserve(db, run, 1, now=t0)
        assert isinstance(refused, Refusal)
        assert refused.resets == dt.datetime.fromisoformat(resets).replace(tzinfo=UTC)
        assert f"resets at {resets}Z" in refused.message
        assert isinstance(reserve(db, run, MICRO, now=t1), Reservation)  # a new window
    finally:
        db.dispose()


def test_run_period_counts_each_run_apart(db_url: str) -> None:
    (one, two, _), ids = _world(db_url, runs=2)
    _budget(db_url, 1.0, "run", project_id=ids["shop"])
    db = Database(db_url)
    try:
        assert isinstance(reserve(db, one, MICRO), Reservation)
        refused = reserve(db, one, 1)
        assert isinstance(refused, Refusal) and refused.resets is None
        assert "lasts the whole run" in refused.message
        assert isinstance(reserve(db, two, MICRO), Reservation)
        assert isinstance(DbLedger(db, two).reserve((), 1), Refusal)
    finally:
        db.dispose()


def test_extra_budgets_count_their_run_only(db_url: str, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """A run's policy ``budgets:`` (the relay passes them for platform rules) count that run's
    rows only; 16 threads against one that fits 10 never overshoot (PostgreSQL: the run's row
    lock; the check is slowed so a missing lock would overshoot every time)."""
    import time

    import corral.server.budgets as ledger

    (one, two, _), _ids = _world(db_url, runs=2)
    plain = ledger._check_extra

    def slow(*args: Any) -> Any:
        got = plain(*args)
        time.sleep(0.02)
        return got

    monkeypatch.setattr(ledger, "_check_extra", slow)
    day = SpendBudget(10 * 370_000, "day", "team.yaml:7")
    db = Database(db_url)
    try:
        admitted = []

        def hammer() -> None:
            for _ in range(2):
                got = DbLedger(db, one).reserve([day], 370_000)
                if isinstance(got, Reservation):
                    admitted.append(got)

        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(admitted) == 10
        refused = DbLedger(db, one).reserve([day], 1)
        assert isinstance(refused, Refusal) and refused.budget == day
        assert "(team.yaml:7)" in refused.message and "resets at" in refused.message
        assert isinstance(DbLedger(db, two).reserve([day], 370_000), Reservation)  # apart
    finally:
        db.dispose()


def _slow_sums() -> None:
    """Widen the window between a reservation's check and its insert (20 ms), so a ledger
    without its lock would overshoot every time, not once in a while."""
    import time

    import corral.server.budgets as ledger

    plain = ledger._sums

    def slow(*args: Any) -> Any:
        got = plain(*args)
        time.sleep(0.02)
        return got

    ledger._sums = slow  # type: ignore[assignment]


def _hammer(url: str, run: str, amount: int, tries: int, out: Any) -> None:
    _slow_sums()
    db = Database(url)
    try:
        ok = 0
        for _ in range(tries):
            if isinstance(reserve(db, run, amount), Reservation):
                ok += 1
        out.put(ok)
    finally:
        db.dispose()


def test_processes_never_overshoot(db_url: str) -> None:
    """Four processes reserve against one budget on the database at once."""
    (run, _), ids = _world(db_url)
    _budget(db_url, 10 * 0.37, "day", team_id=ids["team"])  # fits exactly 10
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(db_url, run, 370_000, 8, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(got) == 10, got
    db = Database(db_url)
    try:
        with db.session() as s:
            total = sum(r.reserved_micro_usd for r in s.query(SpendRow))
        assert total == 10 * 370_000
    finally:
        db.dispose()


# --- through the API -------------------------------------------------------------------------

def _setup_api(server: Served) -> tuple[httpx.Client, str, str]:
    owner = server.client(server.token("owner"))
    assert owner.post("/teams", json={"name": "web"}).status_code == 201
    assert owner.post("/teams", json={"name": "other"}).status_code == 201
    assert owner.post("/teams/web/projects", json={"name": "shop"}).status_code == 201
    assert owner.post("/projects/shop/agents", json={"name": "bot"}).status_code == 201
    reg = owner.post("/projects/shop/runs", json={"host": "h", "sandbox": "s1", "agent": "bot",
                                                  "policy_digest": "0" * 64})
    assert reg.status_code == 201, reg.text
    return owner, reg.json()["run"]["id"], reg.json()["token"]


def test_api_threads_never_overshoot(server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """32 concurrent reservations through the real API against a budget that fits 10."""
    import corral.server.budgets as ledger

    owner, run, token = _setup_api(server)
    monkeypatch.setattr(ledger, "_sums", ledger._sums)  # restored after: _slow_sums patches it
    _slow_sums()
    resp = owner.put("/projects/shop/budgets", json={"amount_usd": 5.0, "period": "day"})
    assert resp.status_code == 200, resp.text
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(32)

    def one() -> None:
        with server.client(token) as c:
            start.wait()
            r = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 500_000})
            assert r.status_code == 200, r.text
            with lock:
                results.append(r.json())

    threads = [threading.Thread(target=one) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    admitted = [r for r in results if "id" in r]
    refused = [r["refused"] for r in results if "refused" in r]
    assert len(results) == 32 and len(admitted) == 10 and len(refused) == 22
    assert {r["label"] for r in refused} == {"project shop budget"}
    with server.client(token) as c:
        for r in admitted:
            assert c.post(f"/runs/{run}/spend/renew", json={"id": r["id"]}).json()["live"]
            settled = c.post(f"/runs/{run}/spend/settle", json={
                "id": r["id"], "cost_micro_usd": 100_000, "model": "claude-x",
                "provider": "anthropic", "input_tokens": 3, "output_tokens": 4})
            assert settled.json() == {"settled": True}
    listed = owner.get("/budgets").json()["budgets"]
    assert listed[0]["spent_usd"] == 1.0 and listed[0]["reserved_usd"] == 0
    spend = owner.get("/projects/shop/spend?by=model").json()
    assert spend["rows"] == [{"model": "claude-x", "cost_usd": 1.0, "requests": 10,
                              "input_tokens": 30, "output_tokens": 40}]
    by_agent = owner.get("/projects/shop/spend?by=agent").json()["rows"]
    assert by_agent[0]["agent"] == "bot"
    assert owner.get("/projects/shop/spend?by=day").json()["total_usd"] == 1.0


def test_api_authz(server: Served) -> None:
    owner, run, token = _setup_api(server)
    member = server.client(server.token("member", team="web"))
    admin = server.client(server.token("admin", team="web"))
    outsider = server.client(server.token("admin", team="other"))
    body = {"amount_usd": 50, "period": "month"}
    assert member.put("/projects/shop/budgets", json=body).status_code == 403
    assert member.put("/teams/web/budgets", json=body).status_code == 403
    assert admin.put("/budgets/org", json=body).status_code == 403
    assert outsider.put("/projects/shop/budgets", json=body).status_code == 404
    assert outsider.get("/projects/shop/spend").status_code == 404
    assert admin.put("/projects/shop/budgets", json={**body, "agent": "bot"}).status_code == 200
    assert admin.put("/projects/shop/budgets",
                     json={**body, "agent": "nobody"}).status_code == 404
    assert owner.put("/budgets/org", json=body).status_code == 200
    assert outsider.get("/budgets").json()["budgets"] == [
        b for b in owner.get("/budgets").json()["budgets"] if b["scope"] == "org"]
    for bad in ({"amount_usd": -1, "period": "day"}, {"amount_usd": 1e7, "period": "day"},
                {"amount_usd": 1, "period": "year"}, {"amount_usd": "NaN", "period": "day"}):
        assert owner.put("/budgets/org", json=bad).status_code == 422, bad
    # the sandbox token reserves for its own run only, and sets nothing
    sandbox = server.client(token)
    assert sandbox.put("/projects/shop/budgets", json=body).status_code == 404
    assert sandbox.put(f"/runs/{run}/budgets", json=body).status_code == 404
    assert member.put(f"/runs/{run}/budgets", json=body).status_code == 403
    assert outsider.put(f"/runs/{run}/budgets", json=body).status_code == 404
    other = owner.post("/projects/shop/runs", json={"host": "h", "sandbox": "s2",
                                                    "policy_digest": "0" * 64}).json()["run"]
    assert sandbox.post(f"/runs/{other['id']}/spend/reserve",
                        json={"amount_micro_usd": 1}).status_code == 403
    db = Database(server.db_url)
    try:
        with db.session() as s:
            sets = [(e.actor, e.target) for e in s.query(AdminEvent)
                    .filter(AdminEvent.action == "budget.set")]
        assert sets == [("token:test-admin", "agent shop/bot"), ("token:test-owner", "org")]
    finally:
        db.dispose()


def test_cli(server: Served) -> None:
    """corral budget set/list and corral spend through the installed CLI."""
    owner, run, token = _setup_api(server)
    env = {"CORRAL_SERVER": server.url, "CORRAL_TOKEN": server.token("admin", team="web")}
    done = cli("budget", "set", "--project", "shop", "--amount", "2.5", "--period", "week",
               env=env)
    assert done.stdout.strip() == "budget set: project shop 2.50 USD per week"
    cli("budget", "set", "--project", "shop", "--agent", "bot", "--amount", "1",
        "--period", "run", env=env)
    member = {**env, "CORRAL_TOKEN": server.token("member", team="web")}
    refused = cli("budget", "set", "--team", "web", "--amount", "9", "--period", "day",
                  env=member, check=False)
    assert refused.returncode != 0 and "admin" in refused.stderr
    with server.client(token) as c:
        got = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 2_000_000}).json()
        assert got["refused"]["label"] == "agent shop/bot budget"
        got = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 250_000}).json()
        c.post(f"/runs/{run}/spend/settle", json={"id": got["id"], "cost_micro_usd": 123_456,
                                                  "model": "gpt-x", "output_tokens": 9})
    listed = json.loads(cli("budget", "list", "--json", env=env).stdout)["budgets"]
    week = next(b for b in listed if b["period"] == "week")
    assert (week["scope"], week["target"], week["amount_usd"], week["spent_usd"]) == \
        ("project", "shop", 2.5, 0.123456)
    table = cli("budget", "list", env=env).stdout
    assert "shop/bot" in table.splitlines()[1] + table.splitlines()[2]
    by_model = json.loads(cli("spend", "--project", "shop", "--by", "model", "--json",
                              env=env).stdout)
    assert by_model["rows"] == [{"model": "gpt-x", "cost_usd": 0.123456, "requests": 1,
                                 "input_tokens": 0, "output_tokens": 9}]
    text = cli("spend", "--project", "shop", "--by", "agent", env=env).stdout
    assert "bot" in text and "total: 0.123456 USD" in text
    outsider = {**env, "CORRAL_TOKEN": server.token("admin", team="other")}
    assert cli("spend", "--project", "shop", env=outsider, check=False).returncode != 0
    cli("budget", "set", "--run", run, "--amount", "0.2", "--period", "run", env=env)
    with server.client(token) as c:
        got = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 100_000}).json()
        assert got["refused"]["label"] == f"run {run} budget"
    del owner


def _chat(max_tokens: int = 1000) -> bytes:
    return json.dumps({"model": "claude-3-5-haiku-20241022", "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_proxy_ledger_against_the_server(server: Served) -> None:
    """The launcher proxy's ledger (corral/proxy/spend_server.py): the policy's budgets
    in-process and the server's, refusals in the provider's shape, fail closed."""
    import time

    from corral.proxy.spend_server import ServerLedger
    from corral.spend import Budget as LocalBudget
    from corral.spend import Exchange, Reply, Spend, load_prices

    owner, run, token = _setup_api(server)
    prices = load_prices()
    ledger = ServerLedger(wait=0.2)
    spend = Spend(prices, ledger, [LocalBudget(100 * MICRO, "run", "policy.yaml:3")])
    # not configured yet (the run registers as the sandbox starts): refused, nothing held
    early = spend.begin("anthropic", "POST", "/v1/messages", _chat())
    assert isinstance(early, Reply) and early.status == 503
    assert json.loads(early.body)["error"]["type"] == "overloaded_error"
    assert dict(early.headers)[b"x-should-retry"] == b"false"
    assert "not registered" in early.body.decode()
    ledger.configure({"url": server.url, "token": token, "run": run})
    first = spend.begin("anthropic", "POST", "/v1/messages", _chat())
    assert isinstance(first, Exchange)
    cap = first.reservation.amount
    owner.put("/projects/shop/budgets", json={"amount_usd": cap * 1.5 / MICRO, "period": "day"})
    over = spend.begin("anthropic", "POST", "/v1/messages", _chat())
    assert isinstance(over, Reply) and over.status == 429
    message = json.loads(over.body)["error"]["message"]
    assert "project shop budget" in message and "per day" in message and "resets at" in message
    first.response(200, [(b"content-type", b"application/json")])
    # a long stream renews its reservation on the server (queued to the ledger's worker)
    db = Database(server.db_url)
    try:
        def renewed_at() -> dt.datetime:
            with db.session() as s:
                row = s.query(SpendRow).one()
                assert row.renewed_at is not None
                return row.renewed_at

        before = renewed_at()
        time.sleep(0.05)
        assert ledger.renew(first.reservation)
        deadline = time.monotonic() + 10
        while renewed_at() <= before:
            assert time.monotonic() < deadline, "the renewal did not reach the server"
            time.sleep(0.05)
    finally:
        db.dispose()
    first.feed(json.dumps({"id": "msg_1", "type": "message", "model": "claude-3-5-haiku-20241022",
                           "usage": {"input_tokens": 10, "output_tokens": 20}}).encode())
    record = first.finish()
    assert record.complete and 0 < record.cost < cap
    deadline = time.monotonic() + 10  # settle is queued to the ledger's worker
    while owner.get("/projects/shop/spend?by=model").json()["rows"][0]["requests"] != 1 or \
            owner.get("/budgets").json()["budgets"][0]["reserved_usd"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    row = owner.get("/projects/shop/spend?by=model").json()["rows"][0]
    assert row == {"model": "claude-3-5-haiku-20241022", "cost_usd": record.cost / MICRO,
                   "requests": 1, "input_tokens": 10, "output_tokens": 20}
    assert isinstance(spend.begin("anthropic", "POST", "/v1/messages", _chat()), Exchange)
    # the server goes away: the next request is refused naming it, never sent unreserved
    gone = ServerLedger(wait=0.2)
    gone.configure({"url": "http://127.0.0.1:9", "token": token, "run": run})
    away = Spend(prices, gone, []).begin("openai", "POST", "/v1/chat/completions",
                                         json.dumps({"model": "gpt-4o", "max_tokens": 5,
                                                     "messages": []}).encode())
    assert isinstance(away, Reply) and away.status == 503
    assert "could not reserve" in away.body.decode() and "127.0.0.1:9" in away.body.decode()
    unavailable = ServerLedger()
    unavailable.configure({"unavailable": "corral server http://x could not be reached"})
    with pytest.raises(LedgerUnavailable, match="could not be reached"):
        unavailable.reserve([], 1)
    assert unavailable.local.spent(LocalBudget(1, "run", "x")) == (0, 0)


def test_server_restarted_between_reserve_and_settle(db_url: str,
                                                    serve: Callable[..., Served]) -> None:
    """A reservation whose settle never came (the server restarted, the launcher died) stops
    holding the budget once it is older than the expiry: a fresh server process charges it in
    full and flags it; a late settle corrects it once."""
    first = serve(db_url)
    owner, run, token = _setup_api(first)
    owner.put("/projects/shop/budgets", json={"amount_usd": 1, "period": "day"})
    with first.client(token) as c:
        held = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 800_000}).json()
        assert "refused" in c.post(f"/runs/{run}/spend/reserve",
                                   json={"amount_micro_usd": 300_000}).json()
    db = Database(db_url)
    try:  # its last renewal three minutes ago
        with db.session() as s:
            row = s.get(SpendRow, held["id"])
            assert row is not None
            row.renewed_at = row.renewed_at - dt.timedelta(minutes=3)  # type: ignore[operator]
    finally:
        db.dispose()
    again = serve(db_url)  # another server process on the same database
    with again.client(token) as c:
        refused = c.post(f"/runs/{run}/spend/reserve", json={"amount_micro_usd": 300_000})
        assert refused.json()["refused"]["reserved_micro_usd"] == 0
        assert refused.json()["refused"]["spent_micro_usd"] == 800_000
        assert not c.post(f"/runs/{run}/spend/renew", json={"id": held["id"]}).json()["live"]
        assert c.post(f"/runs/{run}/spend/settle", json={"id": held["id"],
                                                         "cost_micro_usd": 50_000}).json() == {
            "settled": True}
        assert "id" in c.post(f"/runs/{run}/spend/reserve",
                              json={"amount_micro_usd": 300_000}).json()
    budget = owner.get("/budgets").json()["budgets"][0]
    assert (budget["spent_usd"], budget["reserved_usd"]) == (0.05, 0.3)


OPS = st.lists(st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 600_000)),
    st.tuples(st.just("settle"), st.integers(0, 40), st.integers(0, 700_000)),
    st.tuples(st.just("renew"), st.integers(0, 40)),
    st.tuples(st.just("wait"), st.integers(1, 200)),
), max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_differential_against_the_local_ledger(db_url: str, ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of reserve/settle/renew/time passing: the database ledger admits, refuses
    and reports exactly as the in-process LocalLedger (the reference) with the same budget."""
    from corral.spend import Budget as LocalBudget
    from corral.spend import LocalLedger

    if not hasattr(test_differential_against_the_local_ledger, "world"):
        test_differential_against_the_local_ledger.world = {}  # type: ignore[attr-defined]
    worlds = test_differential_against_the_local_ledger.world  # type: ignore[attr-defined]
    if db_url not in worlds:
        (run, _), ids = _world(db_url)
        _budget(db_url, 1.0, "day", project_id=ids["shop"])
        worlds[db_url] = run
    run = worlds[db_url]
    db = Database(db_url)
    try:
        with db.session() as s:
            s.query(SpendRow).delete()
        clock = [0.0]
        t0 = dt.datetime(2026, 5, 10, 1, tzinfo=UTC)
        ref = LocalLedger(ttl=120, clock=lambda: clock[0], now=lambda: t0)
        budget = LocalBudget(MICRO, "day", "x")
        pairs: list[tuple[Reservation, Reservation]] = []
        for op in ops:
            now = t0 + dt.timedelta(seconds=clock[0])
            if op[0] == "reserve":
                ref.expire()
                want = ref.reserve([budget], op[1])
                expire(db, ttl=120, now=now)
                got = reserve(db, run, op[1], now=now)
                assert type(got) is type(want), (op, got, want)
                if isinstance(got, Refusal) and isinstance(want, Refusal):
                    assert (got.spent, got.reserved, got.needed) == \
                        (want.spent, want.reserved, want.needed)
                elif isinstance(got, Reservation) and isinstance(want, Reservation):
                    pairs.append((want, got))
            elif op[0] == "settle" and pairs:
                want_r, got_r = pairs[op[1] % len(pairs)]
                ref.settle(want_r, op[2])
                settle(db, run, got_r.id, op[2], now=now)
            elif op[0] == "renew" and pairs:
                want_r, got_r = pairs[op[1] % len(pairs)]
                ref.expire()
                expire(db, ttl=120, now=now)
                assert ref.renew(want_r) == renew(db, run, got_r.id, now=now)
            elif op[0] == "wait":
                clock[0] += op[1]
            now = t0 + dt.timedelta(seconds=clock[0])
            ref.expire()
            expire(db, ttl=120, now=now)
            with db.session() as s:
                row = s.query(Budget).one()
                assert window_spend(s, row, now) == ref.spent(budget), op
    finally:
        db.dispose()


@pytest.mark.parametrize("step_up", [False, True])
def test_a_login_token_needs_step_up(server: Served, step_up: bool) -> None:
    """A team admin's stored login (which an agent running as that user could read) cannot
    raise a budget; the same admin's step-up login can."""
    from sqlalchemy import select

    from corral.server.crypto import load_kek
    from corral.server.models import Membership, User
    from corral.server.oidc.accounts import issue_login_token

    _setup_api(server)
    db = Database(server.db_url)
    try:
        with db.session() as session:
            team = session.scalar(select(Team).where(Team.name == "web"))
            assert team is not None
            user = User(email="ann@example.com", idp_subject="ann", name="ann")
            session.add(user)
            session.flush()
            session.add(Membership(team_id=team.id, user_id=user.id, role="admin"))
            _row, secret = issue_login_token(session, load_kek(server.kek), user, name="login",
                                             step_up=step_up, refresh_token=None)
    finally:
        db.dispose()
    with server.client(secret) as c:
        got = c.put("/projects/shop/budgets", json={"amount_usd": 900, "period": "month"})
        if step_up:
            assert got.status_code == 200, got.text
        else:
            assert got.status_code == 403 and got.json()["error"]["code"] == "step_up_required"
        assert c.get("/budgets").status_code == 200
