"""A writer process for concurrency tests: ``_writer.py DB SANDBOX N THREADS [SHARED]``.

Emits N events into SANDBOX's trail from THREADS threads (and, if given, N more into the SHARED
sandbox's trail, which other processes write too), printing each seq as soon as emit() has
returned, then closes SANDBOX's trail (not the shared one).
"""

from __future__ import annotations

import sys
import threading

from corral.audit import AuditStore

db, sandbox, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
shared = sys.argv[5] if len(sys.argv) > 5 else None
store = AuditStore.open(db)
trail = store.trail(sandbox)
other = store.trail(shared) if shared else None
out = threading.Lock()


def work(k: int) -> None:
    for i in range(k, n, threads):
        seq = trail.emit("proxy.allow", host=f"h{i % 7}.example", rule="t.yaml:1", path=f"/{i}")
        with out:
            sys.stdout.write(f"{sandbox} {seq}\n")
            sys.stdout.flush()
        if other is not None:
            other.emit("dns.query", name=f"{sandbox}-{i}.example", rcode="NOERROR")


workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
trail.close("exit 0")
store.close()
