"""Server budgets end to end (issue 15): ``corral run --project`` with the official
``anthropic`` SDK inside the sandbox against the fake provider, a metered project policy and a
project budget on a real ``corral server`` process (SQLite and PostgreSQL). The launcher's proxy
reserves and settles on the server with the run's sandbox token: the first request is served
and settled, the second (whose worst case no longer fits) gets the provider-shaped 429 naming
the project budget and the SDK raises RateLimitError without retrying; ``corral spend
--project`` shows the settled request, the ``llm.usage`` event reaches the server's trail. With
the server gone, a metered request is refused (503, naming the cause), never sent unreserved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.spend import estimate, load_prices
from tests.agents.provider import Provider, provider, sdk_into  # noqa: F401 (a fixture)
from tests.conftest import require, require_root, require_tools
from tests.server.conftest import Served, cli
from tests.server.test_launcher import (  # noqa: F401 (a fixture)
    Server,
    _server_events,
    corral_server,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

MODEL = "claude-haiku-4-5"
AGENT = """
import sys
import anthropic

client = anthropic.Anthropic(max_retries=2)
for max_tokens in (1000, 2000):
    try:
        with client.messages.stream(model='claude-haiku-4-5', max_tokens=max_tokens,
                                    messages=[{'role': 'user', 'content': 'hi'}]) as s:
            print("ok", ''.join(s.text_stream).replace(chr(10), ' '), flush=True)
    except anthropic.RateLimitError as err:
        print("429", str(err).replace(chr(10), " "), flush=True)
    except anthropic.APIStatusError as err:
        print("error", err.status_code, str(err).replace(chr(10), " "), flush=True)
"""


def _policy(p: Provider) -> str:
    pem = p.ca.read_text().strip().replace("\n", "\n      ")
    return f"""name: metered
egress:
  - host: {p.ip}
    ports: [443]
    action: inspect
    credential: anthropic
    meter: anthropic
    tls_ca: |
      {pem}
credentials:
  anthropic: {{secret: store:anthropic, header: x-api-key, format: "{{secret}}",
               env: ANTHROPIC_API_KEY}}
"""


def metered_shop(server: Server, fake: Provider, corral_env: dict[str, str],
                 tmp_path: Path, policy_text: str) -> dict[str, str]:
    """Team web, project shop with agent bot under ``policy_text``, the provider's anthropic
    key set on the server; the owner's environment for the CLI."""
    owner = Served(server.url, server.db_url, Path()).token()
    env = {**os.environ, **corral_env, "CORRAL_SERVER": server.url,
           "CORRAL_TOKEN": owner, "CORRAL_HEARTBEAT_S": "0.3"}
    Path(corral_env["CORRAL_CONFIG"], "config.yaml").write_text(
        f"project_allow_private: [{fake.ip}/32]\n")
    cli("team", "create", "web", env=env)
    cli("project", "create", "shop", "--team", "web", env=env)
    cli("agent", "create", "bot", "--project", "shop", env=env)
    policy = tmp_path / "metered.yaml"
    policy.write_text(policy_text)
    cli("policy", "push", str(policy), "--project", "shop", env=env)
    subprocess.run([sys.executable, "-m", "corral", "creds", "set", "anthropic"],
                   input=fake.keys["anthropic"], text=True, env=env, check=True,
                   capture_output=True)
    return env


def test_project_budget_refuses_over_budget(corral_server: Server,  # noqa: F811
                                            provider: Provider,  # noqa: F811
                                            corral_env: dict[str, str], tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    require(Path("/usr/bin/python3").exists(), "the system python3 (inside the sandbox)")
    provider.hold.touch()  # no stream is held in this test
    env = metered_shop(corral_server, provider, corral_env, tmp_path, _policy(provider))
    body = {"model": MODEL, "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    est = estimate(load_prices(), "anthropic", "anthropic.messages", json.dumps(body).encode())
    budget = est.cost * 1.5 / 1_000_000  # the first fits; then 2000 tokens' worst case no more
    cli("budget", "set", "--project", "shop", "--amount", f"{budget:.6f}", "--period", "day",
        env=env)
    ws = tmp_path / "ws"
    (ws / "lib").mkdir(parents=True)
    sdk_into(ws / "lib")
    (ws / "agent.py").write_text(AGENT)
    for path in [ws, *ws.rglob("*")]:
        os.chown(path, 0, 0)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "run", "--project", "shop", "--agent", "bot",
             "--workspace", str(ws), "--env", f"ANTHROPIC_BASE_URL=https://{provider.ip}",
             "--env", "PYTHONPATH=/workspace/lib", "--", "/usr/bin/python3",
             "/workspace/agent.py"],
            env=env, capture_output=True, text=True, timeout=180)

    done = run()
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    first, second = done.stdout.splitlines()
    assert first.startswith("ok "), done.stdout
    assert second.startswith("429 ") and "project shop budget" in second, done.stdout
    assert "per day" in second and "resets at" in second
    spend = json.loads(cli("spend", "--project", "shop", "--by", "model", "--json",
                           env=env).stdout)
    (row,) = spend["rows"]
    assert row["model"] == MODEL and row["requests"] == 1 and row["output_tokens"] > 0
    assert 0 < row["cost_usd"] < est.cost / 1_000_000
    by_agent = json.loads(cli("spend", "--project", "shop", "--by", "agent", "--json",
                              env=env).stdout)
    assert [r["agent"] for r in by_agent["rows"]] == ["bot"]
    (ran,) = json.loads(cli("sandbox", "list", "--project", "shop", "--all", "--json",
                            env=env).stdout)["runs"]
    events = _server_events(env, ran["id"])
    usage = [e for e in events if e["type"] == "llm.usage"]
    assert len(usage) == 1 and "proxy.deny" in [e["type"] for e in events]
    listed = json.loads(cli("budget", "list", "--json", env=env).stdout)["budgets"]
    assert listed[0]["spent_usd"] == row["cost_usd"] and listed[0]["reserved_usd"] == 0

    # The server goes away: the run goes on (its trail waits), metered requests are refused.
    corral_server.stop()
    away = run()
    assert away.returncode == 0, (away.stdout, away.stderr)
    lines = away.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("error 503 ") for line in lines), lines
    assert "could not be reached" in lines[0] and "no fallback" in lines[0]
