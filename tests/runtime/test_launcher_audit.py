"""Audit wired through the real launcher: one ``corral run`` writes every event type.

The run is a real sandbox with the real proxy (its own uid) under a policy with allow, deny and
inspect + credential rules for the outside host (an IP literal with its ``tls_ca``, in a test
netns). Each event type must be in the store as written by its real component, the chain must
verify, the sandbox can neither read nor write the store, and the secret's bytes never reach
the database. ``corral mcp``'s tool and approval events are covered by tests/mcp/test_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root, require_tools
from proxy.conftest import Outside

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SECRET = "corral-test-secret-" + os.urandom(8).hex()


def _corral(env: dict[str, str], *args: str, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=60, check=False)


def test_one_run_writes_every_event_type(corral_env: dict[str, str], outside: Outside,
                                         tmp_path: Path) -> None:
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv", "curl")
    env = {**os.environ, **corral_env}
    assert _corral(env, "creds", "set", "tok", input=SECRET).returncode == 0
    ip = outside.ip
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""name: wired
egress:
  - host: {ip}
    ports: [443]
    action: inspect
    paths: ["/echo"]
    credential: tok
    tls_ca: {outside.ca}
    allow_private: true
  - host: {ip}
    ports: [443]
    action: deny
    reason: only /echo
  - host: {ip}
    ports: [80]
    action: direct
    allow_private: true
credentials:
  tok:
    secret: tok
    header: Authorization
    format: "Bearer {{secret}}"
    env: TOK
""")
    state = corral_env["CORRAL_HOME"]
    script = "; ".join([
        f"curl -s -o /dev/null -w 'inspect=%{{http_code}}\\n' https://{ip}/echo",
        f"curl -s -o /dev/null -w 'deny=%{{http_code}}\\n' https://{ip}/other",
        f"curl -s -o /dev/null -w 'allow=%{{http_code}}\\n' http://{ip}/echo",
        "python3 -c \"import socket\ntry: socket.getaddrinfo('nowhere.test', 443)\n"
        "except OSError: print('dns=refused')\"",
        f"cat {state}/audit.db >/dev/null 2>&1 && echo read=yes || echo read=no",
        f"echo x >> {state}/audit.db 2>/dev/null && echo write=yes || echo write=no",
    ])
    done = _corral(env, "run", "-p", str(policy), "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["inspect=200", "deny=403", "allow=200", "dns=refused",
                                   "read=no", "write=no"], done
    assert "full trail: corral audit show" in done.stderr  # the summary after the run

    listed = _corral(env, "audit", "list", "--json", "--limit", "0")
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    (sid,) = {e["sandbox"] for e in events if e["sandbox"].isalnum()}
    types = [e["type"] for e in events if e["sandbox"] == sid]
    for kind in ("policy.resolved", "sandbox.create", "sandbox.layer", "exec.start",
                 "proxy.inspect", "proxy.deny", "proxy.allow", "credential.inject",
                 "dns.query", "sandbox.exit", "sandbox.teardown", "trail.close"):
        assert kind in types, (kind, types)
    assert types[0] == "policy.resolved" and types[-1] == "trail.close"
    assert types.index("exec.start") < types.index("proxy.inspect")
    inject = next(e["data"] for e in events if e["type"] == "credential.inject")
    assert inject["binding"] == "tok"
    assert _corral(env, "audit", "verify").returncode == 0

    raw = b"".join(p.read_bytes() for p in Path(state).glob("audit.db*"))
    assert SECRET.encode() not in raw


def test_unwritable_store_refuses_the_run(corral_env: dict[str, str]) -> None:
    """No sandbox without its audit: one line, exit 125, nothing created."""
    require_root()
    require_tools("bwrap", "nft", "ip", "setpriv")
    env = {**os.environ, **corral_env}
    state = Path(corral_env["CORRAL_HOME"])
    state.mkdir(parents=True, exist_ok=True)
    (state / "audit.db").mkdir()  # a store that cannot be opened
    done = _corral(env, "run", "--", "touch", "/workspace/x")
    assert done.returncode == 125
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("corral: audit store") and "will not start" in line
    reg = state / "sandboxes"
    assert not reg.exists() or [p.name for p in reg.iterdir() if p.name != ".lock"] == []
