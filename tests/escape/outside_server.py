"""A stand-in "outside host", run inside a test network namespace.

Listens on TCP 22, 53, 80, 443, 8080 and UDP 53, 9999 (IPv4 and IPv6), answers every TCP
connection with ``hello`` and echoes every datagram, and appends one line per contact to the
log file given as argv[1] so tests can prove that nothing arrived. Prints ``ready`` when bound.
"""

import contextlib
import os
import selectors
import socket
import sys

log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the whole run
sel = selectors.DefaultSelector()
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (22, 53, 80, 443, 8080):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(16)
        sel.register(s, selectors.EVENT_READ, ("tcp", port))
    for port in (53, 9999):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        u.bind((addr, port))
        sel.register(u, selectors.EVENT_READ, ("udp", port))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        kind, port = key.data
        sock = key.fileobj
        if kind == "tcp":
            conn, peer = sock.accept()
            log.write(f"tcp {port} {peer[0]}\n")
            with contextlib.suppress(OSError):
                conn.sendall(b"hello")
            conn.close()
        else:
            data, peer = sock.recvfrom(2048)
            log.write(f"udp {port} {peer[0]}\n")
            sock.sendto(data, peer)
    os.fsync(log.fileno())
