"""The spend meter alone on a 10 MB SSE stream, per API, vs a baseline that JSON-decodes every
event (what a straightforward meter would do), measured in the same run.

Streams: realistic event shapes (tests/spend/streams.py) with 40-character text deltas, fed in
16 KiB chunks (the proxy's read size). Each figure is the best of 5 rounds of process CPU time
(so other work on a shared machine inflates it less). Target: >= 200 MB/s for the meter.

Run: .venv/bin/python bench/bench_meter.py   (writes bench/results/meter.json)
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.spend import Meter, Tokens
from tests.spend.streams import EVENTS, sse

SIZE = 10 << 20
CHUNK = 16 << 10
ROUNDS = 5


def stream(api: str) -> bytes:
    text = "The quick brown fox jumps over the dog. "
    two, one = (len(sse(EVENTS[api]([text] * k, Tokens(1, 1)))) for k in (2, 1))
    # Responses repeats the whole text once more in response.completed
    per = two - one + (len(text) if api == "openai.responses" else 0)
    return sse(EVENTS[api]([text] * (SIZE // per), Tokens(1000, 2000, 3, 4)))


def meter(api: str, data: bytes) -> None:
    m = Meter(api, stream=True)  # type: ignore[arg-type]
    for i in range(0, len(data), CHUNK):
        m.feed(data[i:i + CHUNK])
    assert m.usage.complete


def baseline(api: str, data: bytes) -> None:
    """Split into events as they arrive and decode every one's data."""
    buf = b""
    usage = None
    for i in range(0, len(data), CHUNK):
        buf += data[i:i + CHUNK]
        *events, buf = buf.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    obj = json.loads(line[6:])
                    usage = obj.get("usage") or usage
    assert usage is not None or api == "openai.responses"


def best(fn: object, api: str, data: bytes) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.process_time()
        fn(api, data)  # type: ignore[operator]
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    rows = []
    print(f"{'api':<20} {'MB':>6} {'meter MB/s':>11} {'decode-all MB/s':>16} {'ratio':>6}")
    for api in sorted(EVENTS):
        data = stream(api)
        mb = len(data) / 1e6
        fast, slow = best(meter, api, data), best(baseline, api, data)
        row = {"api": api, "mb": round(mb, 1), "meter_mb_s": round(mb / fast),
               "baseline_mb_s": round(mb / slow), "ratio": round(slow / fast, 1)}
        rows.append(row)
        print(f"{api:<20} {mb:>6.1f} {row['meter_mb_s']:>11} {row['baseline_mb_s']:>16} "
              f"{row['ratio']:>5}x")
    out = Path(__file__).parent / "results" / "meter.json"
    out.write_text(json.dumps({"machine": platform.platform(), "chunk": CHUNK, "rows": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
