"""The compiled matcher agrees with the reference evaluator on random rule sets and requests."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.policy.match import Matcher
from corral.policy.types import Origin, Rule

from .reference import decide

HOSTS = ["a.com", "b.a.com", "c.b.a.com", "x.org", "*.a.com", "*.b.a.com", "*", "10.0.0.1",
         "xn--bcher-kva.example", "*.example"]
REQ_HOSTS = ["a.com", "b.a.com", "c.b.a.com", "d.a.com", "zz.b.a.com", "x.org", "other.net",
             "10.0.0.1", "B.A.COM.", "bücher.example", "xn--bcher-kva.example", "example"]
GLOBS = ["/**", "/a/**", "/a/b", "/b/*", "/a/*/c", "/", "/a/**/c", "/a/b*", "/*/b"]
PATHS = ["/", "/a", "/a/b", "/a/x/c", "/b/q", "/a/b/c", "/zz", "/a/bee", "/q/b", "/a/b?x=1",
         "/a/x/y/c", "/b/"]
PORTS = [80, 443, 8080]
METHODS = ["GET", "POST", "DELETE"]


@st.composite
def rules(draw: st.DrawFn, policy: str, hosts: tuple[str, ...] = tuple(HOSTS)) -> Rule:
    action = draw(st.sampled_from(["direct", "inspect", "deny"]))
    scoped = action != "direct"
    return Rule(
        host=draw(st.sampled_from(hosts)),
        ports=frozenset(draw(st.sets(st.sampled_from(PORTS), min_size=1))),
        action=action,
        origin=Origin(policy, draw(st.integers(1, 10_000))),
        policy=policy,
        methods=draw(st.none() | st.frozensets(st.sampled_from(METHODS), min_size=1))
        if scoped else None,
        paths=draw(st.none() | st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2,
                                        unique=True).map(tuple)) if scoped else None,
        credential=draw(st.sampled_from([None, "k1", "k2"])) if action == "inspect" else None,
    )


policy_sets = st.integers(1, 3).flatmap(
    lambda n: st.tuples(*[st.lists(rules(f"p{i}"), max_size=10) for i in range(n)]))


def compile_(policies: tuple[list[Rule], ...]) -> Matcher:
    flat = [r for rs in policies for r in rs]
    owner = [i for i, rs in enumerate(policies) for _ in rs]
    return Matcher(flat, owner, [f"p{i}" for i in range(len(policies))])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=policy_sets, port=st.sampled_from(PORTS))
def test_request_matches_reference(policies: tuple[list[Rule], ...], port: int) -> None:
    # Every host x method x path of the universe for one port: a wrong index shows up.
    matcher = compile_(policies)
    for host in REQ_HOSTS:
        for method in [*METHODS, "PUT", "get"]:
            for path in PATHS:
                got = matcher.request(host, port, method, path)
                action, rule = decide(policies, host, port, method.upper(), path)
                assert got.action == action, (host, method, path, got.message)
                assert got.rule is rule, (host, method, path, got, rule)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=policy_sets)
def test_connect_matches_reference(policies: tuple[list[Rule], ...]) -> None:
    matcher = compile_(policies)
    for host in REQ_HOSTS:
        for port in PORTS:
            got = matcher.connect(host, port)
            action, rule = decide(policies, host, port, None, None)
            assert got.action == action, (host, port, got.message)
            assert got.rule is rule, (host, port)


EXACT = ("a.com", "b.a.com", "x.org", "10.0.0.1", "xn--bcher-kva.example")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules_=st.lists(rules("p0", EXACT), max_size=12), port=st.sampled_from(PORTS))
def test_single_policy_fast_path_matches_reference(rules_: list[Rule], port: int) -> None:
    matcher = compile_((rules_,))
    assert matcher.simple
    for host in REQ_HOSTS:
        for method in [*METHODS, "PUT", "get"]:
            # Dot segments (also %2e-encoded) are removed before matching, as the server will.
            for path, seen in [*((p, p) for p in PATHS), ("/a/../b/q", "/b/q"),
                               ("/a/%2e%2e/a/b", "/a/b"), ("/x/./a/b", "/x/a/b")]:
                got = matcher.request(host, port, method, path)
                action, rule = decide((rules_,), host, port, method.upper(), seen)
                assert got.action == action and got.rule is rule, (host, method, path)


def test_flat_index_is_exercised_at_scale() -> None:
    many = [Rule(host=f"h{i}.example.test", ports=frozenset({443}), action="inspect",
                 origin=Origin("big", i), policy="big", methods=frozenset({"GET"}),
                 paths=(f"/v{i}/**",)) for i in range(2000)]
    matcher = Matcher(many, [0] * len(many), ["big"])
    got = matcher.request("h1234.example.test", 443, "GET", "/v1234/x")
    assert got.rule is many[1234]
    assert matcher.request("h1234.example.test", 443, "GET", "/v1233/x").action == "deny"
