"""Composition: conflicts are reported iff some request gets differing non-deny outcomes from
two policies (both directions), plus unions, strictest-wins and binding/workspace conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corral.policy import PolicyError, resolve
from corral.policy.compose import find_conflicts
from corral.policy.types import Origin, Rule

from .reference import host_ok, rule_ok

# A universe in which the conservative overlap test is exact, and that holds a witness request
# for every pair of overlapping patterns, so "some request" can be checked by enumeration.
HOSTS = ["a.com", "b.a.com", "c.b.a.com", "x.org", "*.a.com", "*.b.a.com", "*"]
REQ_HOSTS = ["a.com", "b.a.com", "c.b.a.com", "zz.b.a.com", "d.a.com", "x.org", "other.net"]
GLOBS = ["/**", "/a/**", "/a/b", "/b/*", "/a/*/c"]
PATHS = ["/", "/a", "/a/b", "/a/x/c", "/b/q", "/zz"]
PORTS = [80, 443, 8080]
METHODS = ["GET", "POST", "DELETE"]
REQUESTS = [(h, p, m, q) for h in REQ_HOSTS for p in PORTS for m in [*METHODS, "PUT"]
            for q in PATHS]


def _rule(policy: str, line: int, host: str, action: str, ports: frozenset[int],
          methods: frozenset[str] | None = None, paths: tuple[str, ...] | None = None,
          credential: str | None = None) -> Rule:
    return Rule(host=host, ports=ports, action=action,  # type: ignore[arg-type]
                origin=Origin(policy, line), policy=policy, methods=methods, paths=paths,
                credential=credential)


@st.composite
def policy(draw: st.DrawFn, name: str) -> list[Rule]:
    """Rules with pairwise disjoint hosts, so no rule of a policy shadows another."""
    hosts: list[str] = []
    for host in draw(st.lists(st.sampled_from(HOSTS), max_size=4, unique=True)):
        if not any(host_ok(host, h) and host_ok(other, h) for other in hosts for h in REQ_HOSTS):
            hosts.append(host)
    out = []
    for line, host in enumerate(hosts, 1):
        action = draw(st.sampled_from(["direct", "inspect", "deny"]))
        scoped = action != "direct"
        out.append(_rule(
            name, line, host, action, frozenset(draw(st.sets(st.sampled_from(PORTS), min_size=1))),
            draw(st.none() | st.frozensets(st.sampled_from(METHODS), min_size=1))
            if scoped else None,
            draw(st.none() | st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2,
                                      unique=True).map(tuple)) if scoped else None,
            draw(st.sampled_from([None, "k1", "k2"])) if action == "inspect" else None))
    return out


def truly_conflicting(policies: list[list[Rule]]) -> bool:
    for host, port, method, path in REQUESTS:
        outcomes = set()
        for rules in policies:
            first = next((r for r in rules if rule_ok(r, host, port, method, path)), None)
            if first is not None and first.action != "deny":
                outcomes.add((first.action, first.credential))
        if len(outcomes) > 1:
            return True
    return False


SAME = frozenset({443})
CONFLICT = [[_rule("p0", 1, "*.a.com", "direct", SAME)],
            [_rule("p1", 1, "c.b.a.com", "inspect", SAME, paths=("/a/**",))]]
DISJOINT = [[_rule("p0", 1, "*.a.com", "inspect", SAME, paths=("/b/*",))],
            [_rule("p1", 1, "c.b.a.com", "inspect", SAME, paths=("/a/*/c",), credential="k1")]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=st.integers(2, 3).flatmap(
    lambda n: st.tuples(*[policy(f"p{i}") for i in range(n)]).map(list)))
@example(policies=CONFLICT)
@example(policies=DISJOINT)
def test_conflict_iff_some_request_disagrees(policies: list[list[Rule]]) -> None:
    rules = [r for rs in policies for r in rs]
    owner = [i for i, rs in enumerate(policies) for _ in rs]
    reported = bool(find_conflicts(rules, owner))
    assert reported == truly_conflicting(policies)


def test_examples_cover_both_directions() -> None:
    assert truly_conflicting(CONFLICT) and find_conflicts(
        [CONFLICT[0][0], CONFLICT[1][0]], [0, 1])
    assert not truly_conflicting(DISJOINT) and not find_conflicts(
        [DISJOINT[0][0], DISJOINT[1][0]], [0, 1])


def _write(tmp: Path, name: str, text: str) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_conflict_message_names_both_rules(tmp_path: Path, corral_env: dict[str, str]) -> None:
    a = _write(tmp_path, "a", "name: a\negress:\n  - host: api.example.test\n    action: direct\n")
    b = _write(tmp_path, "b", "name: b\negress:\n  - host: '*.example.test'\n"
               "    action: inspect\n")
    with pytest.raises(PolicyError) as info:
        resolve([a, b])
    assert f"{a}:3" in str(info.value) and f"{b}:3" in str(info.value)


def test_deny_overrides_and_agreeing_rules_compose(tmp_path: Path,
                                                  corral_env: dict[str, str]) -> None:
    a = _write(tmp_path, "a", "name: a\negress:\n  - host: x.example.test\n    action: inspect\n")
    b = _write(tmp_path, "b", "name: b\negress:\n  - host: x.example.test\n    action: deny\n"
               "    paths: ['/admin/**']\n  - host: x.example.test\n    action: inspect\n")
    rp = resolve([a, b])
    assert rp.decide_request("x.example.test", 443, "GET", "/").action == "inspect"
    denied = rp.decide_request("x.example.test", 443, "GET", "/admin/users")
    assert denied.action == "deny" and f"{b}:3" in denied.message
    assert rp.decide_connect("x.example.test", 443).action == "inspect"


def test_unions_and_strictest_values(tmp_path: Path, corral_env: dict[str, str]) -> None:
    a = _write(tmp_path, "a", "name: a\nexec: {mode: allow, allow: [ls, 'git *']}\n"
               "files: {approval: none, read: [/srv/a], hide: ['~/.ssh']}\n"
               "limits: {memory: 1GiB, pids: none, wall: 2h}\n")
    b = _write(tmp_path, "b", "name: b\nexec: {mode: allowlist, allow: [ls, pytest]}\n"
               "files: {approval: all, hide: ['~/.aws']}\nlimits: {memory: 512MiB, pids: 64}\n")
    rp = resolve([a, b])
    assert rp.exec.mode == "allowlist" and rp.exec.allow == ("ls", "git *", "pytest")
    assert rp.files.approval == "all" and rp.files.read == (Path("/srv/a"),)
    assert rp.files.hide == (Path("~/.ssh"), Path("~/.aws"))
    assert rp.limits.memory == 512 * 1024**2 and rp.limits.pids == 64 and rp.limits.wall == 7200
    assert rp.limits.idle == 1800  # the default: no policy set it
    prov = rp.provenance
    assert str(prov["limits.memory"][0]) == f"{b}:4" and str(prov["exec.mode"][0]) == f"{b}:2"
    assert [str(o) for o in prov["exec.allow"]] == [f"{a}:2", f"{a}:2", f"{b}:2"]


def test_binding_and_workspace_conflicts(tmp_path: Path, corral_env: dict[str, str]) -> None:
    a = _write(tmp_path, "a", "name: a\ncredentials:\n  tok: {secret: one}\n"
               "files: {workspace: /srv/one}\n")
    b = _write(tmp_path, "b", "name: b\ncredentials:\n  tok: {secret: two}\n"
               "files: {workspace: /srv/two}\n")
    same = _write(tmp_path, "c", "name: c\ncredentials:\n  tok: {secret: one}\n")
    with pytest.raises(PolicyError) as info:
        resolve([a, b])
    problems = "\n".join(info.value.problems)
    assert f"{b}:3: credentials.tok" in problems and f"{a}:3" in problems
    assert f"{b}:4: files.workspace" in problems
    assert resolve([a, same]).credentials["tok"].secret == "store:one"


def test_digest_is_stable_and_content_based(tmp_path: Path, corral_env: dict[str, str]) -> None:
    text = "name: a\negress:\n  - host: x.example.test\n    action: direct\n"
    one = resolve([_write(tmp_path, "a", text)], use_cache=False)
    (tmp_path / "other").mkdir()
    two = resolve([_write(tmp_path / "other", "a", text)], use_cache=False)
    assert one.digest == two.digest and len(one.digest) == 64
    three = resolve([_write(tmp_path, "b", text.replace("direct", "inspect"))], use_cache=False)
    assert three.digest != one.digest


def test_command_line_workspace_overrides(tmp_path: Path, corral_env: dict[str, str]) -> None:
    a = _write(tmp_path, "a", "name: a\nfiles: {workspace: /srv/one}\n")
    b = _write(tmp_path, "b", "name: b\nfiles: {workspace: /srv/two}\n")
    rp = resolve([a, b], workspace=tmp_path / "ws")
    assert rp.files.workspace == tmp_path / "ws"
    assert str(rp.provenance["files.workspace"][0]) == "--workspace"
