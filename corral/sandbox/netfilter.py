"""The sandbox's nftables rules: one ``nft -f`` batch, inside the sandbox's own netns.

Invariants (per sandbox uid, IPv4 and IPv6 alike, in the ``inet`` family):
- traffic on the sandbox's own ``lo`` is allowed (its dev servers work; the proxy and DNS stub
  listen there);
- TCP to ports 80/443 of any non-loopback address is redirected to the proxy listener, and
  UDP/TCP to port 53 to the DNS stub, when those ports are given; without them that traffic is
  rejected like everything else;
- every other packet the sandbox user sends is rejected (TCP reset, else ICMP port-unreachable),
  and the output policy is ``drop`` so a packet owned by nobody else leaves either;
- with a ``log_group``, each packet of the sandbox user about to be rejected is first copied to
  that NFLOG group (at most 100 a second: the kernel drops the rest of a burst), so a recorder in
  the launcher can audit the attempt (``corral.runtime.attempts``); the verdict is unchanged.
Redirected packets are accepted by ``ct status dnat`` rather than by ``oifname "lo"``: the
output hooks see the device chosen before the redirect, the reroute to ``lo`` comes after them.
Only this table's ``redirect`` rules can DNAT in the sandbox netns.
The table lives in the sandbox netns, so it disappears with it: nothing to clean on the host.
"""

from __future__ import annotations

__all__ = ["TABLE", "ruleset"]

TABLE = "corral"


def ruleset(uid: int, proxy_port: int | None, dns_port: int | None,
            log_group: int | None = None) -> str:
    nat: list[str] = []
    if proxy_port is not None:
        nat += [
            f"meta skuid {uid} ip daddr != 127.0.0.0/8 tcp dport {{ 80, 443 }} "
            f"redirect to :{proxy_port}",
            f"meta skuid {uid} ip6 daddr != ::1 tcp dport {{ 80, 443 }} redirect to :{proxy_port}",
        ]
    if dns_port is not None:
        nat.append(
            f"meta skuid {uid} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}"
        )
    nat_body = "".join(f"    {r}\n" for r in nat)
    log = ("" if log_group is None else
           f"    meta skuid {uid} limit rate 100/second burst 100 packets log group {log_group}\n")
    return (
        f"table inet {TABLE} {{\n"
        "  chain nat_output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"{nat_body}"
        "  }\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy drop;\n"
        '    oifname "lo" accept\n'
        "    ct status dnat accept\n"
        "    ct state established,related accept\n"
        f"{log}"
        f"    meta skuid {uid} meta l4proto tcp reject with tcp reset\n"
        f"    meta skuid {uid} reject with icmpx type port-unreachable\n"
        "  }\n"
        "}\n"
    )
