"""Refused packets from the kernel's NFLOG: bind a group, read where each packet was going.

The sandbox netns rules copy every packet they are about to reject to an NFLOG group
(``corral.sandbox.netfilter``); ``bind`` opens the netfilter netlink socket for that group
(inside the netns: netlink sockets belong to the namespace they are made in) and ``parse``
turns what it reads into ``Refused`` destinations. No library speaks NFLOG without pulling in
pyroute2 (~100 ms of imports on every run), and the wire format is small: netlink messages of
type/length/value attributes, the packet's first bytes in ``NFULA_PAYLOAD``.

Invariants:
- ``parse`` never raises on any input: truncated or malformed messages and packets are skipped,
  lengths are bounds-checked (a property test feeds it arbitrary bytes).
- A TCP packet counts only when it opens a connection (SYN without ACK): a refused connect is
  one attempt, not one per retransmission or stray segment.
- Only the destination is read (address, port, protocol): never the payload beyond the
  transport header, which the socket is told not to copy (``COPY_RANGE``).
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

__all__ = ["COPY_RANGE", "Refused", "bind", "parse"]

NETLINK_NETFILTER = 12
_SUBSYS_ULOG = 4
_MSG_PACKET, _MSG_CONFIG = 0, 1
_CFG_CMD, _CFG_MODE, _CFG_QTHRESH = 1, 2, 4
_CMD_BIND = 1
_COPY_PACKET = 2
_NFULA_PAYLOAD = 9
_NLMSG_ERROR = 2
_F_REQUEST, _F_ACK = 1, 4
COPY_RANGE = 64  # an IPv6 header (40) and the ports of a transport header, with room to spare
_PROTOS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


class Refused(NamedTuple):
    address: str
    port: int | None  # None for protocols without ports
    protocol: str


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _config(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (_SUBSYS_ULOG << 8) | _MSG_CONFIG,
                       _F_REQUEST | _F_ACK, seq, 0) + body


def bind(group: int) -> socket.socket:
    """A netlink socket receiving ``group``'s packets (first ``COPY_RANGE`` bytes, each sent at
    once); call inside the netns whose rules log to it. ``OSError`` if the kernel refuses."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        messages = [_attr(_CFG_CMD, bytes([_CMD_BIND])),
                    _attr(_CFG_MODE, struct.pack(">IBB", COPY_RANGE, _COPY_PACKET, 0))
                    + _attr(_CFG_QTHRESH, struct.pack(">I", 1))]
        for seq, attrs in enumerate(messages, 1):
            sock.send(_config(group, attrs, seq))
            reply = sock.recv(4096)
            if len(reply) < 20 or struct.unpack_from("=H", reply, 4)[0] != _NLMSG_ERROR:
                raise OSError("nflog: unexpected reply to a configuration message")
            errno = -struct.unpack_from("=i", reply, 16)[0]
            if errno:
                raise OSError(errno, f"nflog: the kernel refused group {group}")
    except BaseException:
        sock.close()
        raise
    return sock


def _payload(msg: memoryview) -> tuple[int, bytes] | None:
    """(address family, packet bytes) of one NFLOG packet message body, if it has a payload."""
    if len(msg) < 4:
        return None
    family, pos = msg[0], 4
    while pos + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, pos)
        if length < 4 or pos + length > len(msg):
            return None
        if kind & 0x7FFF == _NFULA_PAYLOAD:
            return family, bytes(msg[pos + 4:pos + length])
        pos += (length + 3) & ~3
    return None


def _destination(family: int, packet: bytes) -> Refused | None:
    if family == socket.AF_INET and len(packet) >= 20 and packet[0] >> 4 == 4:
        proto, header = packet[9], (packet[0] & 0x0F) * 4
        address = socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif family == socket.AF_INET6 and len(packet) >= 40 and packet[0] >> 4 == 6:
        proto, header = packet[6], 40  # extension headers: reported by their next-header value
        address = socket.inet_ntop(socket.AF_INET6, packet[24:40])
    else:
        return None
    name = _PROTOS.get(proto, str(proto))
    if proto in (6, 17, 132, 136):
        if header < 20 or len(packet) < header + 4:
            return None
        port = struct.unpack_from(">H", packet, header + 2)[0]
        if proto == 6:
            if len(packet) < header + 14:
                return None
            flags = packet[header + 13]
            if not flags & 0x02 or flags & 0x10:  # not SYN, or SYN-ACK
                return None
        return Refused(address, port, name)
    return Refused(address, None, name)


def parse(data: bytes) -> list[Refused]:
    """Every refused destination in one ``recv`` of the NFLOG socket (possibly several
    netlink messages); anything malformed is skipped."""
    out: list[Refused] = []
    view, pos = memoryview(data), 0
    while pos + 16 <= len(view):
        length, kind = struct.unpack_from("=IH", view, pos)
        if length < 16 or pos + length > len(view):
            break
        if kind == (_SUBSYS_ULOG << 8) | _MSG_PACKET:
            found = _payload(view[pos + 16:pos + length])
            if found is not None:
                dest = _destination(*found)
                if dest is not None:
                    out.append(dest)
        pos += (length + 3) & ~3
    return out
