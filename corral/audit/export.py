"""Export audit events as JSON lines or as OTLP logs (OpenTelemetry SDK, OTLP/HTTP exporter).

Each event becomes one log record: body = the event type, attributes = ``corral.*`` keys
(sandbox, seq, id, hash, actor) plus the payload as ``corral.data.<field>``; the timestamp is
the event's. Values that are not scalars are JSON-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any

from corral.audit.query import Event
from corral.errors import CorralError

__all__ = ["export_jsonl", "export_otlp"]


def export_jsonl(events: Iterable[Event], out: IO[str]) -> int:
    n = 0
    for ev in events:
        out.write(json.dumps(ev.to_dict(), sort_keys=True) + "\n")
        n += 1
    return n


def _attr(value: Any) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True)


def export_otlp(events: Iterable[Event], endpoint: str, *, timeout: float = 10.0) -> int:
    """Send events to an OTLP/HTTP logs endpoint (e.g. http://collector:4318/v1/logs)."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )
    from opentelemetry.sdk.resources import Resource

    inner = OTLPLogExporter(endpoint=endpoint, timeout=timeout)

    class Checked(LogRecordExporter):
        """Counts records the collector did not accept: the SDK only logs such failures."""

        failed = 0

        def export(self, batch: Any) -> Any:
            result = inner.export(batch)
            if result != LogRecordExportResult.SUCCESS:
                Checked.failed += len(batch)
            return result

        def shutdown(self) -> None:
            inner.shutdown()  # type: ignore[no-untyped-call]

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    exporter = Checked()
    provider = LoggerProvider(resource=Resource.create({"service.name": "corral"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    logger = provider.get_logger("corral.audit")
    n = 0
    for ev in events:
        attrs: dict[str, Any] = {
            "corral.sandbox": ev.sandbox,
            "corral.seq": ev.seq,
            "corral.id": ev.id,
            "corral.hash": ev.hash,
            "corral.event": ev.type,
            "corral.actor.user": str(ev.actor.get("user")),
        }
        if ev.actor.get("sudo_user"):
            attrs["corral.actor.sudo_user"] = str(ev.actor["sudo_user"])
        for k, v in ev.data.items():
            attrs[f"corral.data.{k}"] = _attr(v)
        severity = (
            SeverityNumber.WARN if ev.type in ("proxy.deny", "error") else SeverityNumber.INFO
        )
        logger.emit(
            timestamp=ev.ts_us * 1000,
            body=ev.type,
            attributes=attrs,
            severity_number=severity,
            severity_text=severity.name,
            event_name=ev.type,
        )
        n += 1
    ok = provider.force_flush(int(timeout * 1000))
    provider.shutdown()
    if not ok:
        raise CorralError(f"OTLP export to {endpoint} did not complete within {timeout:g}s")
    if Checked.failed:
        raise CorralError(
            f"OTLP export to {endpoint}: the collector did not accept "
            f"{Checked.failed} of {n} records"
        )
    return n
