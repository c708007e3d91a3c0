"""``corral audit ...`` end to end: the real command against a store in CORRAL_HOME."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from corral.audit import AuditStore, summary

CORRAL = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")


def corral(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [CORRAL, "audit", *args], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    if check is not None:
        assert out.returncode == check, (out.stdout, out.stderr)
    return out


@pytest.fixture
def populated(corral_env: dict[str, str]) -> Path:
    store = AuditStore.open()
    t = store.trail("sb-1")
    t.emit("sandbox.create", uid=60001, command=["claude"], mode="run")
    t.emit("policy.resolved", digest="sha256:abc", sources=["builtin:anthropic"])
    t.emit(
        "proxy.inspect",
        host="api.anthropic.com",
        rule="builtin:anthropic:4",
        method="POST",
        path="/v1/messages",
        status=200,
        bytes_in=10,
        bytes_out=20,
        duration_ms=12.5,
    )
    t.emit("credential.inject", binding="anthropic", host="api.anthropic.com", header="x-api-key")
    t.emit(
        "proxy.deny", host="evil.example", rule="default deny", method="GET", path="/x", status=403
    )
    t.emit("proxy.allow", host="objects.example", rule="p.yaml:9", method="GET", status=200)
    t.emit("sandbox.exit", status=3)
    t.close("exit 3")
    open_trail = store.trail("sb-2")
    open_trail.emit("dns.query", name="evil.example", rcode="NXDOMAIN")
    store.close()
    return Path(corral_env["CORRAL_HOME"]) / "audit.db"


def test_list_table_json_and_filters(populated: Path) -> None:
    out = corral("list")
    assert "proxy.deny" in out.stdout and "evil.example" in out.stdout and "sb-2" in out.stdout
    rows = [
        json.loads(x) for x in corral("list", "--json", "--type", "proxy.deny").stdout.splitlines()
    ]
    assert [r["data"]["host"] for r in rows] == ["evil.example"]
    assert rows[0]["actor"]["user"] == "root"
    fam = corral("list", "--json", "-t", "proxy.*", "--sandbox", "sb-1").stdout.splitlines()
    assert len(fam) == 3
    assert corral("list", "--since", "1h", "--json").stdout.count("\n") == 9
    assert "no matching events" in corral("list", "--since", "2999-01-01").stdout
    last2 = [json.loads(x) for x in corral("list", "--json", "--limit", "2").stdout.splitlines()]
    assert [r["type"] for r in last2] == ["trail.close", "dns.query"]
    bad = corral("list", "--since", "yesterday", check=2)
    assert "'--since': 'yesterday'" in bad.stderr and "Traceback" not in bad.stderr


def test_show_verify_head(populated: Path) -> None:
    out = corral("show", "sb-1").stdout
    assert "launched by root" in out and "closed" in out and "credential.inject" in out
    assert corral("show", "nope", check=2).stderr.startswith("corral: no sandbox or event")
    ok = corral("verify")
    assert ok.stdout.startswith("ok: 9 events in 2 chains, 1 ledger entries")
    h = corral("head").stdout.strip()
    assert len(h) == 64
    corral("verify", "--head", h)
    bad = corral("verify", "--head", "0" * 63 + "1", check=1)
    assert "not in the ledger" in bad.stderr


def test_verify_names_tampered_event(populated: Path) -> None:
    con = sqlite3.connect(populated)
    con.execute(
        "UPDATE events SET data = replace(data, 'evil.example', 'fine.example') "
        "WHERE type='proxy.deny'"
    )
    con.commit()
    con.close()
    out = corral("verify", check=1)
    assert "BROKEN: sandbox sb-1: event id 5 (seq 5, proxy.deny) edited" in out.stdout
    assert out.stderr.startswith("corral: audit trail verification failed")
    assert "fine.example" in corral("list").stdout  # list still reads it


def test_prune_keeps_ledger(populated: Path) -> None:
    h = corral("head").stdout.strip()
    assert "pruned 8 events of 1 closed trails" in corral("prune", "--before", "2999-01-01").stdout
    assert corral("verify", "--head", h).stdout.startswith("ok: 1 events in 2 chains, 1 ledger")
    assert "events pruned" in corral("show", "sb-1").stdout


def test_missing_store_is_one_line(corral_env: dict[str, str]) -> None:
    out = corral("list", check=1)
    assert out.stderr.startswith("corral: no audit store at") and out.stderr.count("\n") == 1


def test_tail_follows_new_events(populated: Path) -> None:
    proc = subprocess.Popen(
        [CORRAL, "audit", "tail", "-f", "-n", "2", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline() for _ in range(2)]
        assert "trail.close" in first[0] and "dns.query" in first[1]
        store = AuditStore.open()
        store.trail("sb-2").emit("proxy.deny", host="late.example", rule="default deny")
        store.close()
        line = proc.stdout.readline()
        assert "proxy.deny" in line and "late.example" in line
    finally:
        proc.kill()
        proc.wait()


def test_export_jsonl(populated: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    corral("export", "--format", "jsonl", "-o", str(target))
    rows = [json.loads(x) for x in target.read_text().splitlines()]
    assert len(rows) == 9 and rows[0]["type"] == "sandbox.create"
    assert "'--format': 'xml'" in corral("export", "--format", "xml", check=2).stderr


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/logs"
    server.shutdown()
    server.server_close()


def test_export_otlp_to_a_collector(populated: Path, collector: str) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    out = corral("export", "--format", "otlp", "--endpoint", collector, "--type", "proxy.*")
    assert "exported 3 events" in out.stderr
    assert _Collector.received
    records = []
    for path, ctype, body in _Collector.received:
        assert path == "/v1/logs" and ctype == "application/x-protobuf"
        req = ExportLogsServiceRequest.FromString(body)
        for rl in req.resource_logs:
            assert any(
                a.key == "service.name" and a.value.string_value == "corral"
                for a in rl.resource.attributes
            )
            for sl in rl.scope_logs:
                records.extend(sl.log_records)
    assert [r.body.string_value for r in records] == ["proxy.inspect", "proxy.deny", "proxy.allow"]
    deny = {a.key: a.value for a in records[1].attributes}
    assert deny["corral.sandbox"].string_value == "sb-1"
    assert deny["corral.data.host"].string_value == "evil.example"
    assert deny["corral.seq"].int_value == 5
    assert records[1].time_unix_nano > 1_600_000_000 * 10**9


def test_export_otlp_failure_is_reported(populated: Path) -> None:
    out = corral(
        "export",
        "--format",
        "otlp",
        "--endpoint",
        "http://127.0.0.1:9/v1/logs",
        "--timeout",
        "1",
        check=1,
    )
    assert out.stderr.strip().splitlines()[-1].startswith("corral: OTLP export")


def test_summary_after_a_run(populated: Path) -> None:
    text = summary("sb-1")
    assert "exit status 3" in text
    assert "api.anthropic.com" in text and "evil.example" in text
    assert "credentials used: anthropic ×1" in text
    assert "corral audit show sb-1" in text
    assert len(text.splitlines()) < 20
    line = next(x for x in text.splitlines() if x.startswith("evil.example"))
    assert line.split()[1:] == ["0", "0", "1"]


def test_summary_stays_one_screen(corral_env: dict[str, str]) -> None:
    store = AuditStore.open()
    t = store.trail("sb-many")
    for i in range(40):
        t.emit_nowait("proxy.allow", host=f"h{i}.example", rule="p.yaml:1")
    t.emit("proxy.deny", host="blocked.example", rule="default deny")
    store.close()
    lines = summary("sb-many").splitlines()
    assert len(lines) < 24
    assert lines[2].startswith("blocked.example")  # denied hosts first
    assert any("29 more hosts" in x for x in lines)


def test_foreign_file_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all\n" * 100)
    for cmd in (["list"], ["verify"], ["show", "x"], ["head"]):
        out = corral(*cmd, "--db", str(junk), check=1)
        assert out.stderr.startswith("corral: cannot open the audit store"), out.stderr
        assert "Traceback" not in out.stderr
