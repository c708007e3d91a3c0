"""Spend end to end (issue 15): the official ``anthropic`` and ``openai`` SDKs inside a real
``corral run`` whose policy meters the fake provider's API and holds a budget that fits 10
worst-case requests. 32 concurrent streaming requests: the fake provider holds every stream it
gets open until the test has seen the other 22 refused, so all 32 are decided while the
admitted ones still stream. Exactly 10 succeed, the 22 others raise the SDK's own
RateLimitError after one request each (``x-should-retry: false``), the provider sees exactly
10 requests (OpenAI's with ``include_usage`` added by the proxy), and the trail holds 10
complete ``llm.usage`` events whose cost stays within the budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral.spend import estimate, load_prices
from tests.agents.provider import Provider, provider  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]
N, FITS = 32, 10


AGENT = """
import sys, threading
import {api} as sdk

client = sdk.{cls}(max_retries=2)  # the default: a 429 would be retried were it not for
lock = threading.Lock()            # x-should-retry: false


def say(*words):
    with lock:
        print(*words, flush=True)


def one():
    try:
        {call}
        say("ok", text)
    except sdk.RateLimitError as err:
        say("429", str(err).replace(chr(10), " "))
    except Exception as err:
        say("error", repr(err))


threads = [threading.Thread(target=one) for _ in range({n})]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

CALLS = {
    "anthropic": ("Anthropic", "claude-haiku-4-5", "ANTHROPIC_BASE_URL", "https://{ip}",
                  "with client.messages.stream(model='claude-haiku-4-5', max_tokens=1000, "
                  "messages=[{'role': 'user', 'content': 'hi'}]) as s:\n"
                  "            text = ''.join(s.text_stream)",
                  {"model": "claude-haiku-4-5", "max_tokens": 1000, "stream": True,
                   "messages": [{"role": "user", "content": "hi"}]}, "/v1/messages"),
    "openai": ("OpenAI", "gpt-4o-mini", "OPENAI_BASE_URL", "https://{ip}/v1",
               "s = client.chat.completions.create(model='gpt-4o-mini', max_tokens=1000, "
               "stream=True, messages=[{'role': 'user', 'content': 'hi'}])\n"
               "        text = ''.join(c.choices[0].delta.content or '' for c in s "
               "if c.choices)",
               {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o-mini",
                "max_tokens": 1000, "stream": True}, "/v1/chat/completions"),
}


def _events(corral: list[str], env: dict[str, str], kind: str) -> list[dict[str, object]]:
    out = subprocess.run([*corral, "audit", "list", "--type", kind, "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e["data"] for e in events]


@pytest.mark.parametrize("api", sorted(CALLS))
def test_32_concurrent_streams_against_a_budget_that_fits_10(
        api: str, provider: Provider,  # noqa: F811
        tmp_path: Path, corral_env: dict[str, str]) -> None:
    cls, model, base_var, base_url, call, body, path = CALLS[api]
    env = {**os.environ, **corral_env}
    corral = [sys.executable, "-m", "corral"]
    subprocess.run([*corral, "creds", "set", api], input=provider.keys[api], text=True,
                   env=env, check=True, capture_output=True)
    est = estimate(load_prices(), api, "openai.chat" if api == "openai" else
                   "anthropic.messages", json.dumps(body).encode())
    budget_usd = est.cost * (FITS + 0.5) / 1_000_000  # 10 fit, 11 do not (any SDK framing)
    builtin = yaml.safe_load((Path(__file__).resolve().parents[2] / "corral" / "policy" /
                              "builtin" / f"{api}.yaml").read_text(encoding="utf-8"))
    policy = tmp_path / "metered.yaml"
    policy.write_text(yaml.safe_dump({
        "name": "metered",
        "egress": [{"host": provider.ip, "ports": [443], "action": "inspect",
                    "tls_ca": str(provider.ca), "credential": api, "meter": api}],
        "credentials": builtin["credentials"],
        "budgets": [{"amount": budget_usd, "period": "run"}, {"amount": 100, "period": "day"}],
    }), encoding="utf-8")
    venv = tmp_path / "venv.yaml"
    venv.write_text(yaml.safe_dump({"name": "venv", "files": {
        "read": sorted({sys.prefix, sys.base_prefix})}}), encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "agent.py").write_text(AGENT.format(api=api, cls=cls, call=call, n=N),
                                 encoding="utf-8")
    run = subprocess.Popen(
        [*corral, "run", "-p", str(policy), "-p", str(venv), "--workspace", str(ws),
         "--env", f"{base_var}={base_url.format(ip=provider.ip)}", "--",
         sys.executable, "agent.py"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert run.stdout is not None
        # Every refusal arrives while the admitted streams are held open upstream.
        while sum(line.startswith("429") for line in lines) < N - FITS:
            line = run.stdout.readline()
            assert line, (lines, run.stderr.read() if run.stderr else "")
            lines.append(line.rstrip("\n"))
            assert not line.startswith(("ok", "error")), lines
        provider.hold.touch()
        rest, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    lines += rest.splitlines()
    assert run.returncode == 0, (lines, err)
    ok = [line for line in lines if line.startswith("ok")]
    refused = [line for line in lines if line.startswith("429")]
    assert len(ok) == FITS and len(refused) == N - FITS, lines
    assert all(f"hello from fake {api} (stream)" in line for line in ok), ok
    assert all("corral budget exhausted" in line and "per run (" in line
               and "lasts the whole run" in line for line in refused), refused
    seen = [json.loads(provider.log.stdout.readline()) for _ in range(FITS)]  # type: ignore[union-attr]
    assert all(s["api"] == api and s["key_ok"] and s["stream"] for s in seen), seen
    if api == "openai":
        assert all(s.get("include_usage") is True for s in seen), seen
    usage = _events(corral, env, "llm.usage")
    assert len(usage) == FITS, usage
    assert all(u["complete"] is True and u["flagged"] is False and u["model"] == model
               and u["input_tokens"] == 5 and u["output_tokens"] == 7 for u in usage), usage
    assert sum(float(u["cost_usd"]) for u in usage) <= budget_usd  # type: ignore[arg-type]
    denied = [d for d in _events(corral, env, "proxy.deny") if d.get("status") == 429]
    # One request each (no SDK retried); identical refusals are folded (audit budget: count).
    assert sum(int(d.get("count", 1)) for d in denied) == N - FITS, denied  # type: ignore[call-overload]
    assert all(d.get("path", "").startswith(path) for d in denied)  # type: ignore[union-attr]
