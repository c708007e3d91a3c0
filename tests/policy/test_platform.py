"""``action: platform``: the loader's cross-field rules, composition (platform conflicts with
inspect and direct as they conflict with each other), decisions and ``policy explain``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.policy.compose import compose
from corral.policy.errors import PolicyError
from corral.policy.load import load_policy_text

CRED = """credentials:
  key:
    secret: server:provider-key
    header: x-api-key
    format: "{secret}"
"""


def _policy(name: str, rules: str, creds: str = CRED) -> str:
    return f"name: {name}\n{creds}egress:\n{rules}"


def test_platform_rule_loads_and_decides() -> None:
    pol = load_policy_text("p.yaml", _policy("p", """  - host: api.example.com
    action: platform
    credential: key
    paths: ["/v1/**"]
"""))
    rp = compose([pol])
    assert rp.decide_connect("api.example.com", 443).action == "platform"
    decision = rp.decide_request("api.example.com", 443, "POST", "/v1/messages")
    assert decision.action == "platform" and decision.credential == "key"
    # the launcher's proxy never injects a server credential itself
    assert rp.credentials_for(decision) is None
    assert rp.decide_request("api.example.com", 443, "GET", "/other").action == "deny"


@pytest.mark.parametrize(("rules", "creds", "message"), [
    ("  - {host: a.example.com, action: inspect, credential: key}\n", CRED,
     "use action: platform"),
    ("  - {host: a.example.com, action: platform, credential: key}\n",
     "credentials:\n  key: {secret: store:k}\n", "secret: server:NAME"),
    ("  - {host: a.example.com, action: platform, allow_private: true}\n", CRED,
     "relay.allow_private"),
    ("  - {host: a.example.com, action: direct, credential: key}\n", CRED,
     "needs action: inspect or platform"),
    ("  - {host: a.example.com, action: platform}\n",
     "credentials:\n  key: {secret: 'server:Bad Name'}\n", "bad server credential name"),
])
def test_loader_refuses(rules: str, creds: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy_text("p.yaml", _policy("p", rules, creds))
    assert message in str(err.value), err.value.problems


def test_platform_rule_may_meter() -> None:
    # the server's relay meters it (docs/spend.md "Under platform")
    pol = load_policy_text("p.yaml", _policy("p", "  - {host: a.example.com, action: platform, "
                                             "credential: key, meter: openai}\n"))
    assert pol.rules[0].meter == "openai" and pol.rules[0].action == "platform"


def test_server_source_needs_no_trust() -> None:
    # server:NAME names a value on corral server: an untrusted (uploaded) policy may use it
    pol = load_policy_text("p.yaml", _policy("p", "  - {host: a.example.com, action: platform, "
                                             "credential: key}\n"))
    assert pol.credentials["key"].secret == "server:provider-key"


ACTIONS = ["inspect", "direct", "platform"]


@settings(max_examples=60, deadline=None)
@given(a=st.sampled_from(ACTIONS), b=st.sampled_from(ACTIONS),
       host_b=st.sampled_from(["api.example.com", "*.example.com", "*", "other.example.org"]))
def test_composition_conflicts(a: str, b: str, host_b: str) -> None:
    """Two policies' overlapping rules conflict exactly when their actions differ, for every
    pair of the three allowing actions (platform included)."""
    first = load_policy_text("a.yaml", _policy("a", f"  - {{host: api.example.com, "
                                               f"action: {a}}}\n", ""))
    second = load_policy_text("b.yaml", _policy("b", f"  - {{host: '{host_b}', "
                                                f"action: {b}}}\n", ""))
    overlap = host_b != "other.example.org"
    if overlap and a != b:
        with pytest.raises(PolicyError) as err:
            compose([first, second])
        assert "conflict" in str(err.value)
    else:
        compose([first, second])


def test_connect_with_platform_and_direct_in_one_policy_is_judged_per_request() -> None:
    pol = load_policy_text("p.yaml", _policy("p", """  - host: api.example.com
    action: platform
    paths: ["/v1/**"]
  - host: api.example.com
    action: inspect
"""))
    rp = compose([pol])
    assert rp.decide_connect("api.example.com", 443).action in ("inspect", "platform")
    assert rp.decide_request("api.example.com", 443, "GET", "/v1/x").action == "platform"
    assert rp.decide_request("api.example.com", 443, "GET", "/y").action == "inspect"


def test_explain_names_the_relay(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "p.yaml"
    path.write_text(_policy("p", "  - {host: api.example.com, action: platform, "
                            "credential: key}\n"))
    out = subprocess.run([sys.executable, "-m", "corral", "policy", "explain", "-p", str(path),
                          "-X", "POST", "https://api.example.com/v1/messages"],
                         capture_output=True, text=True, check=True).stdout
    assert "platform" in out and "relayed through corral server" in out
    assert "server:provider-key" in out


def test_an_inline_pem_tls_ca_survives_loading_verbatim() -> None:
    """base64 may hold '//': a Path folded it and the CA stopped parsing (a flaky relay test)."""
    import pickle

    from corral.policy import load_policy_text

    pem = "-----BEGIN CERTIFICATE-----\nMIIB//abc/def//\n-----END CERTIFICATE-----\n"
    text = ("name: p\negress:\n  - host: api.example.test\n    action: inspect\n"
            "    tls_ca: |\n" + "".join(f"      {line}\n" for line in pem.splitlines()))
    rule = load_policy_text("p.yaml", text).rules[0]
    assert rule.tls_ca == pem  # text, not a Path
    assert pickle.loads(pickle.dumps(rule)).tls_ca == pem
    path = load_policy_text("p.yaml", text.split("    tls_ca")[0] + "    tls_ca: ./ca.pem\n")
    assert isinstance(path.rules[0].tls_ca, Path)
