"""``corral.proxy.inject``: when a request gets its credential, how it is set, and that
``apply`` records ``credential.inject`` (durable) before it hands back the headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.policy.types import CredentialBinding, Decision, Origin, Rule
from corral.proxy import inject
from corral.proxy.request_head import Target

ORIGIN = Origin("p.yaml", 3)
BINDING = CredentialBinding("tok", ORIGIN, header="Authorization", format="Bearer {secret}")
SECRETS = {"tok": {"secret": "s3cr3t"}}


def _decision(action: str = "inspect", credential: str | None = "tok") -> Decision:
    rule = Rule("api.example", frozenset({443}), action, ORIGIN, "p", credential=credential)  # type: ignore[arg-type]
    return Decision(action, rule, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(("decision", "binding", "method", "tls", "secrets", "expected"), [
    (_decision(), BINDING, "GET", True, SECRETS, True),
    (_decision("direct"), BINDING, "GET", True, SECRETS, False),  # not inspected
    (_decision(credential=None), BINDING, "GET", True, SECRETS, False),  # rule names none
    (_decision(), None, "GET", True, SECRETS, False),  # binding missing
    (_decision(), BINDING._replace(name="other"), "GET", True, SECRETS, False),
    (_decision(), BINDING, "trace", True, SECRETS, False),  # TRACE echoes the secret
    (_decision(), BINDING, "GET", False, SECRETS, False),  # plaintext upstream
    (_decision(), BINDING._replace(plaintext=True), "GET", False, SECRETS, True),
    (_decision(), BINDING, "GET", True, {}, False),  # secret not resolved
])
def test_plan(decision: Decision, binding: CredentialBinding | None, method: str, tls: bool,
              secrets: dict[str, Any], expected: bool) -> None:
    got = inject.plan(decision, binding, secrets, method=method, tls=tls)
    assert (got is not None) == expected


_names = st.sampled_from([b"authorization", b"Authorization", b"AUTHORIZATION", b"accept",
                          b"x-a", b"host"])
_headers = st.lists(st.tuples(_names, st.binary(min_size=0, max_size=8)), max_size=8)


@given(_headers)
def test_set_header_replaces_every_copy_and_keeps_the_rest(headers: list[tuple[bytes, bytes]]
                                                           ) -> None:
    out = inject.set_header(headers, inject.Injection(BINDING, {"secret": "s3cr3t"}))
    auth = [v for n, v in out if n.lower() == b"authorization"]
    assert auth == [b"Bearer s3cr3t"]  # the agent's own copies are gone, in any case
    assert [h for h in out if h[0].lower() != b"authorization"] == [
        h for h in headers if h[0].lower() != b"authorization"]


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7f), min_size=1))
def test_set_header_refuses_control_bytes(secret: str) -> None:
    injection = inject.Injection(BINDING, {"secret": secret})
    if any(c in secret for c in "\r\n\x00") or any(
            (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7f for c in secret):
        with pytest.raises(inject.InjectionError) as err:
            inject.set_header([], injection)
        assert secret not in str(err.value) or len(secret) < 2
    else:
        inject.set_header([], injection)


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def emit(self, event_type: str, /, **fields: Any) -> None:
        await asyncio.sleep(0)
        self.events.append((event_type, fields))


class _Agent:
    def __init__(self) -> None:
        self.ctx = type("Ctx", (), {"audit": _Audit()})()


def test_apply_records_before_returning_the_headers() -> None:
    agent = _Agent()
    target = Target("api.example", 443, True, "/x")
    headers, body = asyncio.run(inject.apply(
        agent, inject.Injection(BINDING, {"secret": "s3cr3t"}), _decision(), target,  # type: ignore[arg-type]
        "/x", "GET", [(b"host", b"api.example"), (b"authorization", b"agent's own")]))
    assert body is None
    assert headers == [(b"host", b"api.example"), (b"Authorization", b"Bearer s3cr3t")]
    assert agent.ctx.audit.events == [("credential.inject", {
        "binding": "tok", "host": "api.example", "header": "Authorization", "rule": "p.yaml:3"})]
    assert "s3cr3t" not in repr(agent.ctx.audit.events)
