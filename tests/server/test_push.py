"""``POST /runs/{run}/push`` (``corral audit push``) on SQLite and PostgreSQL: whatever mix of
batches the run's launcher shipped with its sandbox token and its human then pushes with their
own token — overlapping, resent, in any split — the server holds the chain exactly once; only
the human who launched the run may push (403 for another token of the same team, nothing
stored), a push revokes the run's sandbox token, and an ended run takes nothing more (409)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.client import Refused, ServerRun
from tests.server.chains import make_chain
from tests.server.conftest import Served
from tests.server.test_ingest import DIGEST, _project, _stored


def _push(server: Served, token: str, run_id: str, events: list[dict[str, Any]],
          end: bool = False) -> Any:
    with server.client(token) as c:
        return c.post(f"/runs/{run_id}/push", json={"events": events, "end": end,
                                                    "exit_status": 0 if end else None})


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_push_stores_the_chain_once_whatever_the_split(server: Served, data: Any) -> None:
    if not hasattr(server, "owner"):
        server.owner = _project(server)  # type: ignore[attr-defined]
    owner = server.owner  # type: ignore[attr-defined]
    run = ServerRun.register(server.url, owner, "shop", host="h", sandbox="sb-p",
                             policy_digest=DIGEST)
    chain = make_chain("sb-p", 20)
    shipped = data.draw(st.integers(0, 20), "shipped by the launcher")
    if shipped:
        run.ship_events(chain[:shipped])
    acked = shipped
    # The human pushes from some point at or before the server's cursor (a resend overlaps),
    # in batches of random sizes, the last one ending the run.
    at = data.draw(st.integers(0, acked), "push from")
    cuts = data.draw(st.lists(st.integers(at, 20), max_size=5), "cuts")  # repeats: empty ones
    points = [*sorted(cuts), 20]
    for i, end in enumerate(points):
        batch = chain[at:end]
        answer = _push(server, owner, run.id, batch, end=i == len(points) - 1)
        assert answer.status_code == 200, answer.text
        acked = max(acked, end)
        assert answer.json()["acked"] == acked
        at = end
    assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in chain]
    with pytest.raises(Refused) as err:  # the push took the run over from its launcher
        run.heartbeat()
    assert err.value.status == 401
    again = _push(server, owner, run.id, chain[-1:], end=True)
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_ended"


def test_only_the_runs_human_may_push(server: Served) -> None:
    owner = _project(server)
    admin = server.token("admin")  # another token of the org, with a higher role than needed
    run = ServerRun.register(server.url, owner, "shop", host="h", sandbox="sb-q",
                             policy_digest=DIGEST)
    chain = make_chain("sb-q", 5)
    run.ship_events(chain[:2])
    refused = _push(server, admin, run.id, chain[2:], end=True)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_your_run"
    assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in chain[:2]]
    run.heartbeat()  # the launcher's token still works: nothing was taken over
    # A batch that does not link is refused as ingest refuses it, and nothing is stored.
    forged = make_chain("sb-q", 3, start=3, payload="forged")
    bad = _push(server, owner, run.id, forged, end=True)
    assert bad.status_code == 409 and bad.json()["error"]["code"] == "chain_broken"
    assert _stored(server, run.id) == [(e["seq"], e["hash"]) for e in chain[:2]]
    with server.client(owner) as c:
        assert c.get(f"/runs/{run.id}").json()["run"]["status"] == "running"
    part = _push(server, owner, run.id, chain[2:4])  # not ended yet: the run is taken over
    assert part.status_code == 200 and part.json()["acked"] == 4
    with pytest.raises(Refused) as err:
        run.heartbeat()
    assert err.value.status == 401
    done = _push(server, owner, run.id, chain[4:], end=True)
    assert done.status_code == 200 and done.json()["status"] == "ended"
