"""Method-override headers: a request is decided under every method it may be read as.

The upstream (``upgrade_servers.Smuggler``) honours ``X-HTTP-Method-Override``,
``X-HTTP-Method`` and ``X-Method-Override`` and logs the method it acted on, so the tests see
what a real server would have done with the injected credential.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import RunningProxy, wait_for
from .test_upgrade import read_response
from .upgrade_servers import Smuggler, smuggler

HOST = "ws.corral.test"
SECRET = "SECRET-OVERRIDE-TOK"
POLICY = """
name: override
egress:
  - host: ws.corral.test
    ports: [PORT]
    action: deny
    methods: [DELETE]
    reason: deletes are out of scope
  - host: ws.corral.test
    ports: [PORT]
    action: inspect
    methods: [GET, POST]
    credential: tok
    allow_private: true
  - host: ws.corral.test
    ports: [PORT]
    action: inspect
    methods: [PUT]
    allow_private: true
credentials:
  tok: {secret: tok, header: Authorization, format: "Bearer {secret}", env: TOK, plaintext: true}
"""


@dataclass
class Env:
    proxy: RunningProxy
    server: Smuggler

    def send(self, method: str, headers: list[tuple[str, str]]) -> int:
        """One request on a fresh connection; the response status (0 if none)."""
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as sock:
            extra = "".join(f"{n}: {v}\r\n" for n, v in headers)
            sock.sendall(
                f"{method} http://{HOST}:{self.server.port}/api HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Length: 0\r\n{extra}\r\n".encode()
            )
            status, _, _ = read_response(sock)
        return status


@pytest.fixture
def env(make_proxy) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    with smuggler() as server:
        proxy = make_proxy(
            POLICY.replace("PORT", str(server.port)), {"tok": SECRET},
            overrides={HOST: ["127.0.0.1"]},
        )
        yield Env(proxy, server)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-HTTP-Method-Override", "DELETE")],
        [("x-http-method", "delete")],
        [("X-METHOD-OVERRIDE", "Delete")],
        [("X-HTTP-Method-Override", "GET"), ("x-http-method-override", "DELETE")],
        [("X-HTTP-Method-Override", "GET, DELETE")],
    ],
)
def test_override_to_a_denied_method_is_denied(env: Env, headers: list[tuple[str, str]]) -> None:
    status = env.send("POST", headers)
    assert [s.effective for s in env.server.log] == []  # never reached the server
    assert status == 403
    (event,) = env.proxy.sink.of("proxy.deny", host=HOST)
    assert event["rule"].endswith(":4")  # the deny rule, named
    assert headers[-1][0].lower() in event["reason"]


def test_override_allowed_by_another_rule_gets_no_credential(env: Env) -> None:
    # POST carries the credential (rule at line 9); PUT is allowed only without one (line 15).
    status = env.send("POST", [("X-HTTP-Method-Override", "PUT")])
    assert env.server.log == []
    assert status == 403
    (event,) = env.proxy.sink.of("proxy.deny", host=HOST)
    assert ":15" in event["reason"] and event["rule"].endswith(":9")
    assert "x-http-method-override" in event["reason"]


def test_override_within_the_rule_passes_with_the_credential(env: Env) -> None:
    assert env.send("POST", [("X-HTTP-Method-Override", "get")]) == 200
    (seen,) = env.server.log
    assert seen.effective == "GET"
    assert (b"authorization", f"Bearer {SECRET}".encode()) in seen.headers
    # the response record of an injected request is written after the response (RelayAudit.send)
    assert wait_for(lambda: env.proxy.sink.of("proxy.inspect", host=HOST, status=200))


@pytest.mark.parametrize("value", ["DEL ETE", "", "GET,", "GÉT"])
def test_override_that_names_no_method_is_a_400(env: Env, value: str) -> None:
    assert env.send("POST", [("X-HTTP-Method-Override", value)]) in (400, 403)
    assert env.server.log == []


# -- property: the server never acts on a method the credential's rule does not allow ----

_ALLOWED = {"GET", "POST"}
_flips = st.lists(st.booleans(), max_size=30)


def _cased(text: str, flips: list[bool]) -> str:
    flips = flips + [False] * len(text)
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=False))


_name = st.builds(
    lambda base, flips, sep: _cased(base, flips).replace("-", sep),
    st.sampled_from(["x-http-method-override", "x-http-method", "x-method-override"]),
    _flips,
    st.sampled_from(["-", "-", "_"]),
)
_method = st.builds(
    lambda m, flips, a, b: a + _cased(m, flips) + b,
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    _flips,
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", " "]),
)
_headers = st.lists(
    st.tuples(_name, st.lists(_method, min_size=1, max_size=2).map(",".join)),
    max_size=3,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(method=st.sampled_from(["GET", "POST"]), headers=_headers)
def test_property_override_never_escapes_the_rule(
    env: Env, method: str, headers: list[tuple[str, str]]
) -> None:
    before = len(env.server.log)
    status = env.send(method, headers)
    reached = env.server.log[before:]
    readings = {item.strip(" \t").upper() for _, v in headers for item in v.split(",")}
    for seen in reached:
        acted_on = {item.strip(" \t") for item in seen.effective.split(",")}
        assert acted_on <= _ALLOWED, (headers, seen)
    if readings <= _ALLOWED:
        assert status == 200 and len(reached) == 1, (status, headers)
    else:
        assert status == 403 and not reached, (status, headers)
