"""The Python SDK recipes of docs/agents.md, run for real: the official ``anthropic`` and
``openai`` SDKs (examples/agents/*.py) inside ``corral run`` against a fake provider that
speaks their wire formats over TLS in a test network namespace.

The policies are the built-ins ``builtin:anthropic`` / ``builtin:openai`` with only the host
moved to the fake provider's address (and its CA added): the same credential bindings, stored
with ``corral creds set``. The provider answers only when the proxy injected the real key; the
agent prints what it sees in its key variable, which must be the placeholder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import require, require_tools

from corral.policy.builtin import builtin_path
from tests.agents.provider import Provider, serve

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    with serve(tmp_path_factory.mktemp("provider"), net="10.251", prefix="p") as got:
        yield got


def _moved_builtin(name: str, host: str, ip: str, ca: Path, out: Path) -> Path:
    """The built-in policy with its API host moved to the fake provider (same binding)."""
    path = builtin_path(name)
    assert path is not None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rules = [r for r in data["egress"] if r["host"] == host]
    assert len(rules) == 1 and rules[0].get("credential") == name
    rules[0].update(host=ip, tls_ca=str(ca))
    data["egress"] = rules
    out.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


CASES = {
    "anthropic": ("api.anthropic.com", "ANTHROPIC_BASE_URL", "https://{ip}", "ANTHROPIC_API_KEY"),
    "openai": ("api.openai.com", "OPENAI_BASE_URL", "https://{ip}/v1", "OPENAI_API_KEY"),
}


@pytest.mark.parametrize("api", sorted(CASES))
def test_sdk_agent_gets_answers_with_a_key_it_never_sees(
        api: str, provider: Provider, tmp_path: Path, corral_env: dict[str, str]) -> None:
    host, base_var, base_url, key_var = CASES[api]
    env = {**os.environ, **corral_env}
    corral = [sys.executable, "-m", "corral"]
    subprocess.run([*corral, "creds", "set", api], input=provider.keys[api], text=True,
                   env=env, check=True, capture_output=True)
    policy = _moved_builtin(api, host, provider.ip, provider.ca, tmp_path / f"{api}.yaml")
    # The recipe's "make the interpreter visible": this venv and the Python it was made from.
    venv = tmp_path / "venv.yaml"
    venv.write_text(yaml.safe_dump({"name": "venv", "files": {
        "read": sorted({sys.prefix, sys.base_prefix})}}), encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "examples" / "agents" / f"{api}_agent.py", ws / "agent.py")
    probe = f"import os; print('key seen:', os.environ['{key_var}'])"
    done = subprocess.run(
        [*corral, "run", "-p", str(policy), "-p", str(venv), "--workspace", str(ws),
         "--env", f"{base_var}={base_url.format(ip=provider.ip)}", "--",
         "sh", "-c", f"{sys.executable} agent.py && {sys.executable} -c \"{probe}\""],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert lines[:2] == [f"hello from fake {api} (json)", f"hello from fake {api} (stream)"], done
    assert lines[2].startswith("key seen: ") and provider.keys[api] not in done.stdout + done.stderr
    seen = [json.loads(provider.log.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
    assert seen == [{"api": api, "key_ok": True, "stream": False},
                    {"api": api, "key_ok": True, "stream": True}]
    trail = subprocess.run([*corral, "audit", "list", "--type", "credential.inject", "--json"],
                           env=env, capture_output=True, text=True, check=True)
    injected = [json.loads(line) for line in trail.stdout.splitlines() if line.strip()]
    assert len(injected) == 2 and all(api in json.dumps(e) for e in injected), trail.stdout
    assert provider.keys[api] not in trail.stdout


def _npm_install(where: Path, package: str, binary: str) -> Path:
    """``package`` from npm into ``where`` (a directory of this test session); its bin."""
    require_tools("npm")
    done = subprocess.run(
        ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(where),
         package], capture_output=True, text=True, timeout=300, check=False)
    path = where / "node_modules" / ".bin" / binary
    require(path.exists(), f"{package} from npm ({done.stderr.strip()[-300:]})")
    return path


# The recipes' tests script the model's side of Claude Code's requests, which change between
# releases (2.1.332 loads MCP tools through ToolSearch; npm on Node 20 picks 2.1.197 for a bare
# name): one pinned release, the one on PATH or in .venv/node only if it is that one.
CLAUDE_CODE = "2.1.332"


def _version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    return done.stdout.split(" ")[0].strip()


@pytest.fixture(scope="module")
def claude(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Claude Code ``CLAUDE_CODE`` from npm (@anthropic-ai/claude-code ships a native binary):
    on PATH or in .venv/node when it is that release, else installed into a directory of this
    session (~10 s here), so a fresh clone runs the recipes instead of skipping them."""
    found = shutil.which("claude")
    local = REPO / ".venv" / "node" / "node_modules" / ".bin" / "claude"
    for path in [*([Path(found)] if found else []), local]:
        if path.exists() and _version(path) == CLAUDE_CODE:
            return path.resolve()
    return _npm_install(tmp_path_factory.mktemp("claude"),
                        f"@anthropic-ai/claude-code@{CLAUDE_CODE}", "claude").resolve()


@pytest.fixture(scope="module")
def codex(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Codex CLI from npm (@openai/codex: a node shim starting the native binary of
    @openai/codex-linux-*), installed into a directory of this session; its node_modules."""
    where = tmp_path_factory.mktemp("codex")
    where.chmod(0o755)
    _npm_install(where, "@openai/codex", "codex")
    return where / "node_modules"


def test_claude_code_print_mode_inside_corral_run(
        provider: Provider, claude: Path, tmp_path: Path, corral_env: dict[str, str]) -> None:
    """docs/agents.md "Claude Code inside corral run": `claude -p` answers through the proxy
    with the key injected; it only ever holds the placeholder."""
    env = {**os.environ, **corral_env}
    corral = [sys.executable, "-m", "corral"]
    subprocess.run([*corral, "creds", "set", "anthropic"], input=provider.keys["anthropic"],
                   text=True, env=env, check=True, capture_output=True)
    policy = _moved_builtin("anthropic", "api.anthropic.com", provider.ip, provider.ca,
                            tmp_path / "anthropic.yaml")
    tools = tmp_path / "tools.yaml"
    tools.write_text(yaml.safe_dump({"name": "claude-code", "files": {
        "read": [str(claude.parent)]}}), encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    done = subprocess.run(
        [*corral, "run", "-p", str(policy), "-p", str(tools), "--workspace", str(ws),
         "--env", f"ANTHROPIC_BASE_URL=https://{provider.ip}",
         "--env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
         str(claude), "-p", "Say hello."],
        env=env, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done
    assert "hello from fake anthropic" in done.stdout, done
    assert provider.keys["anthropic"] not in done.stdout + done.stderr
    seen: list[dict[str, object]] = []
    while not seen or seen[-1].get("api") != "anthropic":
        seen.append(json.loads(provider.log.stdout.readline()))  # type: ignore[union-attr]
    assert seen[-1]["key_ok"] is True, seen


def test_codex_exec_inside_corral_run(
        provider: Provider, codex: Path, tmp_path: Path, corral_env: dict[str, str]) -> None:
    """docs/agents.md "Codex CLI": `codex exec` (Responses API, streaming) answers through the
    proxy with the key injected; Codex only ever holds the placeholder."""
    env = {**os.environ, **corral_env}
    corral = [sys.executable, "-m", "corral"]
    subprocess.run([*corral, "creds", "set", "openai"], input=provider.keys["openai"],
                   text=True, env=env, check=True, capture_output=True)
    policy = _moved_builtin("openai", "api.openai.com", provider.ip, provider.ca,
                            tmp_path / "openai.yaml")
    tools = tmp_path / "tools.yaml"
    tools.write_text(yaml.safe_dump({"name": "codex", "files": {"read": [str(codex)]}}),
                     encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    # The recipe's command, with only the API's address moved to the fake provider; first
    # the agent shows what it holds in its key variable.
    script = ('echo "key seen: $OPENAI_API_KEY" >&2; '
              'CODEX_API_KEY="$OPENAI_API_KEY" exec "$CODEX" exec --skip-git-repo-check '
              '--sandbox danger-full-access -c "$BASE" "Say hello." </dev/null')
    done = subprocess.run(
        [*corral, "run", "-p", str(policy), "-p", str(tools), "--workspace", str(ws),
         "--env", f"CODEX={codex / '.bin' / 'codex'}",
         "--env", f'BASE=openai_base_url="https://{provider.ip}/v1"', "--", "sh", "-c", script],
        env=env, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done
    assert "hello from fake responses (stream)" in done.stdout, done
    assert "key seen: " in done.stderr and provider.keys["openai"] not in done.stdout + done.stderr
    seen: list[dict[str, object]] = []
    while not seen or seen[-1].get("api") != "responses":
        seen.append(json.loads(provider.log.stdout.readline()))  # type: ignore[union-attr]
    assert seen[-1] == {"api": "responses", "key_ok": True, "stream": True}, seen
