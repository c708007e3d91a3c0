"""The public API of corral.policy: resolve, decisions, credentials_for, the empty policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.errors import UserInputError
from corral.policy import Decision, PolicyError, ResolvedPolicy, resolve

POLICY = """\
name: team
egress:
  - host: api.example.test
    ports: [443]
    action: inspect
    methods: [GET]
    paths: ["/repos/**"]
    credential: tok
  - host: "*.cdn.example.test"
    action: direct
  - host: blocked.example.test
    action: deny
    reason: not for agents
credentials:
  tok:
    secret: store:tok
"""


@pytest.fixture
def team(tmp_path: Path, corral_env: dict[str, str]) -> ResolvedPolicy:
    path = tmp_path / "team.yaml"
    path.write_text(POLICY)
    return resolve([str(path)])


def test_empty_policy_denies_with_defaults(corral_env: dict[str, str]) -> None:
    rp = resolve([])
    decision = rp.decide_request("example.test", 443, "GET", "/")
    assert decision.action == "deny" and decision.rule is None
    assert "default deny" in decision.message
    assert rp.limits.memory == 4 * 1024**3 and rp.exec.mode == "approve"


def test_decisions_and_credentials(team: ResolvedPolicy) -> None:
    ok = team.decide_request("API.example.test.", 443, "GET", "/repos/a/b?x=1")
    assert ok.action == "inspect" and ok.rule is not None and ok.rule.origin.line == 3
    binding = team.credentials_for(ok)
    assert binding is not None and binding.secret == "store:tok"
    post = team.decide_request("api.example.test", 443, "POST", "/repos/a")
    assert post.action == "deny" and "default deny" in post.message
    assert team.credentials_for(post) is None
    deny = team.decide_request("blocked.example.test", 443, "GET", "/")
    assert deny.action == "deny" and "team.yaml:11" in deny.message
    assert "not for agents" in deny.message
    assert team.decide_connect("x.y.cdn.example.test", 80).action == "direct"
    assert team.decide_connect("cdn.example.test", 443).action == "deny"  # apex excluded
    assert team.decide_connect("api.example.test", 443).action == "inspect"


def test_dot_segments_cannot_escape_a_path_rule(team: ResolvedPolicy) -> None:
    assert team.decide_request("api.example.test", 443, "GET", "/repos/../admin").action == "deny"
    assert team.decide_request("api.example.test", 443, "GET", "/repos/%2e%2e/x").action == "deny"
    # Every reading of an encoded '/' stays under /repos/**: allowed; climbing out is not.
    assert team.decide_request("api.example.test", 443, "GET", "/repos/a%2Fb").action == "inspect"
    escaped = team.decide_request("api.example.test", 443, "GET", "/repos/a%2F..%2F..%2Fadmin")
    assert (escaped.action, escaped.status) == ("deny", 400)


@pytest.mark.parametrize(
    "args",
    [(None, 443), ("a b", 443), ("x.test", "443"), ("", 1), (b"x", 1), ("x..y", 443)],
)
def test_decisions_never_raise(team: ResolvedPolicy, args: tuple[object, object]) -> None:
    assert team.decide_connect(*args).action == "deny"  # type: ignore[arg-type]
    assert team.decide_request(*args, None, 7).action == "deny"  # type: ignore[arg-type]


def test_policy_error_is_user_input_error(tmp_path: Path, corral_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\negress: 3\n")
    with pytest.raises(PolicyError) as info:
        resolve([str(bad)])
    assert isinstance(info.value, UserInputError) and info.value.exit_code == 2
    assert f"{bad}:2: egress" in str(info.value)


def test_builtins_resolve_together(corral_env: dict[str, str]) -> None:
    from corral.policy import builtin_names

    names = builtin_names()
    assert {"anthropic", "openai", "github", "pypi", "npm", "debian"} <= set(names)
    rp = resolve([f"builtin:{n}" for n in names])
    assert rp.decide_request("pypi.org", 443, "GET", "/simple/x/").action == "inspect"
    assert rp.decide_request("pypi.org", 443, "POST", "/").action == "deny"
    with pytest.raises(PolicyError, match="no such built-in"):
        resolve(["builtin:nope"])


def test_ambiguous_paths_fail_closed_both_ways(tmp_path: Path, corral_env: dict[str, str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\negress:\n  - host: x.example.test\n    action: deny\n"
                    "    paths: ['/admin/**']\n  - host: x.example.test\n    action: inspect\n")
    rp = resolve([str(path)])
    assert rp.decide_request("x.example.test", 443, "GET", "/public/a").action == "inspect"
    for sneaky in ("/x%2F..%2Fadmin", "/a\\..\\admin", "/%61dmin/x", "/public/..;/admin"):
        denied = rp.decide_request("x.example.test", 443, "GET", sneaky)
        assert denied.action == "deny" and f"{path}:3" in denied.message, sneaky
    unreadable = rp.decide_request("x.example.test", 443, "GET", "/admin#x")
    assert (unreadable.action, unreadable.status) == ("deny", 400)
    # Empty segments merge into '/public/admin' for every server: no reading is under /admin.
    assert rp.decide_request("x.example.test", 443, "GET", "/public//admin").action == "inspect"


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.text(max_size=30), port=st.integers(-5, 70000), method=st.text(max_size=8),
       path=st.text(max_size=30))
def test_decisions_never_raise_on_any_text(team: ResolvedPolicy, host: str, port: int,
                                          method: str, path: str) -> None:
    for decision in (team.decide_connect(host, port),
                     team.decide_request(host, port, method, path)):
        assert isinstance(decision, Decision) and isinstance(decision.message, str)
