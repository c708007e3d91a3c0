"""Spend under ``action: platform`` (issue 15): the official ``anthropic`` and ``openai`` SDKs
inside a real ``corral run --project`` sandbox call the fake provider (TLS, a test network
namespace) through metered platform rules; their keys exist only on the real ``corral server``
process, whose relay injects them (the SDKs see placeholders), meters the responses (JSON and
SSE) and settles them: ``corral spend --project`` shows every request with its tokens, the
admin log holds one ``llm.usage`` per request, the provider saw OpenAI's stream with
``include_usage`` added by the relay. Then a project budget that no worst case fits: each SDK
raises its own ``RateLimitError`` naming the budget, after one request (``x-should-retry:
false``; the relay saw each once, the provider none). SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from corral.server.db import Database
from corral.server.models import AdminEvent
from tests.agents.provider import Provider, sdk_into, serve
from tests.conftest import require, require_root, require_tools
from tests.server.conftest import Served, cli
from tests.server.test_launcher import Server, _server_events, _wait

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

AGENT = """
import os, sys
import anthropic, openai

print("keys", os.environ["ANTHROPIC_API_KEY"], os.environ["OPENAI_API_KEY"], flush=True)
ant = anthropic.Anthropic(max_retries=2)  # a 429 is retried by default, unless told not to
oai = openai.OpenAI(max_retries=2)
msg = [{'role': 'user', 'content': 'hi'}]


def call(name, fn):
    try:
        print("ok", name, fn().replace(chr(10), ' '), flush=True)
    except (anthropic.RateLimitError, openai.RateLimitError) as err:
        print("429", name, str(err).replace(chr(10), " "), flush=True)
    except Exception as err:
        print("error", name, repr(err).replace(chr(10), " "), flush=True)


def ant_stream():
    with ant.messages.stream(model='claude-haiku-4-5', max_tokens=1000, messages=msg) as s:
        return ''.join(s.text_stream)


def oai_stream():
    s = oai.chat.completions.create(model='gpt-4o-mini', max_tokens=1000, stream=True,
                                    messages=msg)
    return ''.join(c.choices[0].delta.content or '' for c in s if c.choices)


call("anthropic-json", lambda: ant.messages.create(
    model='claude-haiku-4-5', max_tokens=1000, messages=msg).content[0].text)
call("anthropic-sse", ant_stream)
call("openai-json", lambda: oai.chat.completions.create(
    model='gpt-4o-mini', max_tokens=1000, messages=msg).choices[0].message.content)
call("openai-sse", oai_stream)
"""


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    with serve(tmp_path / "provider", net="10.253", prefix="m") as got:
        yield got


@pytest.fixture
def relay_server(db_url: str, kek_file: Path, tmp_path: Path, provider: Provider
                 ) -> Iterator[Server]:
    server = Server(db_url, kek_file, tmp_path)
    server.config.write_text(f"kek_file: {kek_file}\nrelay:\n  allow_private: "
                             f"['{provider.ip}/32']\n")
    server.start()
    yield server
    server.stop()


def _policy(p: Provider) -> str:
    pem = p.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: metered-platform
credentials:
  anthropic: {{secret: "server:anthropic", header: x-api-key, format: "{{secret}}",
               env: ANTHROPIC_API_KEY}}
  openai: {{secret: "server:openai", header: Authorization, format: "Bearer {{secret}}",
            env: OPENAI_API_KEY}}
egress:
  - host: {p.ip}
    ports: [443]
    action: platform
    credential: anthropic
    meter: anthropic
    paths: ["/v1/messages"]
    tls_ca: |
      {pem}
  - host: {p.ip}
    ports: [443]
    action: platform
    credential: openai
    meter: openai
    paths: ["/v1/chat/completions"]
    tls_ca: |
      {pem}
"""


def _admin(db_url: str, action: str) -> list[dict[str, object]]:
    db = Database(db_url)
    try:
        with db.session() as s:
            return [dict(e.detail) for e in s.scalars(
                select(AdminEvent).where(AdminEvent.action == action).order_by(AdminEvent.id))]
    finally:
        db.dispose()


def test_sdks_metered_through_the_relay(relay_server: Server, provider: Provider,
                                        corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    require(Path("/usr/bin/python3").exists(), "the system python3 (inside the sandbox)")
    owner = Served(relay_server.url, relay_server.db_url, Path()).token()
    env = {**os.environ, **corral_env, "CORRAL_SERVER": relay_server.url,
           "CORRAL_TOKEN": owner, "CORRAL_HEARTBEAT_S": "0.3"}
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    policy = tmp_path / "metered.yaml"
    policy.write_text(_policy(provider))
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    for name in ("anthropic", "openai"):
        cli("creds", "set", name, "--project", "shop", env=env, stdin=provider.keys[name])
    ws = tmp_path / "ws"
    (ws / "lib").mkdir(parents=True)
    sdk_into(ws / "lib", ("anthropic", "openai"))
    (ws / "agent.py").write_text(AGENT)
    for path in [ws, *ws.rglob("*")]:
        os.chown(path, 0, 0)

    def run() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-m", "corral", "run", "--project", "shop", "--workspace",
             str(ws), "--env", f"ANTHROPIC_BASE_URL=https://{provider.ip}",
             "--env", f"OPENAI_BASE_URL=https://{provider.ip}/v1",
             "--env", "PYTHONPATH=/workspace/lib", "--", "/usr/bin/python3",
             "/workspace/agent.py"],
            env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
        for key in provider.keys.values():
            assert key not in done.stdout + done.stderr
        return done.stdout.splitlines()

    keys, *answers = run()
    assert keys.startswith("keys ") and "REAL" not in keys, keys
    assert [a.split(" ", 2)[:2] for a in answers] == [
        ["ok", "anthropic-json"], ["ok", "anthropic-sse"], ["ok", "openai-json"],
        ["ok", "openai-sse"]], answers
    seen = [json.loads(provider.log.stdout.readline())  # type: ignore[union-attr]
            for _ in range(4)]
    assert [(s["api"], s["key_ok"], s["stream"]) for s in seen] == [
        ("anthropic", True, False), ("anthropic", True, True), ("openai", True, False),
        ("openai", True, True)], seen
    assert seen[3].get("include_usage") is True  # added by the relay for the meter

    # Settled after the response ended (off the relay's event loop): wait for all four.
    usage = _wait(lambda: (got := _admin(relay_server.db_url, "llm.usage")) and len(got) == 4
                  and got, "four llm.usage records")
    assert all(u["complete"] is True and u["flagged"] is False and u["input_tokens"] == 5
               and u["output_tokens"] == 7 for u in usage), usage
    assert sorted(str(u["model"]) for u in usage) == ["claude-haiku-4-5"] * 2 + [
        "gpt-4o-mini"] * 2
    spend = json.loads(cli("spend", "--project", "shop", "--by", "model", "--json",
                           env=env).stdout)
    rows = {r["model"]: r for r in spend["rows"]}
    assert set(rows) == {"claude-haiku-4-5", "gpt-4o-mini"}, spend
    for row in rows.values():
        assert row["requests"] == 2 and row["output_tokens"] == 14 and row["cost_usd"] > 0
    total = sum(float(r["cost_usd"]) for r in rows.values())
    assert abs(total - sum(float(u["cost_usd"]) for u in usage)) < 1e-5  # type: ignore[arg-type]

    # A budget that no request's worst case fits any more: the SDKs' own RateLimitError.
    cli("budget", "set", "--project", "shop", "--amount", f"{total + 0.00001:.6f}", "--period",
        "day", env=env)
    keys, *answers = run()
    assert [a.split(" ", 2)[:2] for a in answers] == [
        ["429", "anthropic-json"], ["429", "anthropic-sse"], ["429", "openai-json"],
        ["429", "openai-sse"]], answers
    for answer in answers:
        assert "corral budget exhausted" in answer and "project shop budget" in answer
        assert "per day" in answer and "resets at" in answer
    refused = _admin(relay_server.db_url, "spend.refused")
    assert [r["status"] for r in refused] == [429] * 4, refused  # one request each: no retry
    runs = json.loads(cli("sandbox", "list", "--project", "shop", "--all", "--json",
                          env=env).stdout)["runs"]
    events = [e for ran in runs for e in _server_events(env, ran["id"])]
    denied = [e for e in events if e["type"] == "proxy.deny" and e["data"].get("status") == 429]
    assert sum(int(e["data"].get("count", 1)) for e in denied) == 4, denied
    assert _admin(relay_server.db_url, "llm.usage") == usage  # nothing more was charged
