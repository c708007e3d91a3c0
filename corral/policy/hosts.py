"""Host names and host patterns: normalisation, validation, matching and overlap.

Invariants kept here (and relied on by ``match`` and ``compose``):
- A normalised host is lowercase, has no trailing dot, is in IDNA (punycode) form, and an IP
  literal is in ``ipaddress``'s compressed form without brackets. Patterns are stored the same
  way, so matching is plain string comparison.
- A pattern is exactly one of: an exact name, ``*.suffix`` (any depth of subdomains, never the
  apex), ``*`` (everything), or an IP literal. A ``*`` anywhere else is rejected, as is a
  wildcard over a public suffix (``*.com``, ``*.co.uk``): that would open a whole TLD.
- ``patterns_overlap`` is the one conservative overlap test for hosts: two patterns overlap
  when one matches the other (treating the other as a host) or either is ``*``.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "PUBLIC_SUFFIXES",
    "host_matches",
    "normalize_host",
    "normalize_pattern",
    "patterns_overlap",
]

# Multi-label public suffixes commonly met; every single-label suffix (a TLD) is public too.
# A wildcard over one of these would allow a whole registry's worth of unrelated owners.
PUBLIC_SUFFIXES = frozenset(
    """
    co.uk org.uk ac.uk gov.uk me.uk ltd.uk plc.uk net.uk sch.uk nhs.uk
    com.au net.au org.au edu.au gov.au id.au asn.au
    co.nz org.nz net.nz govt.nz ac.nz
    co.jp ne.jp or.jp ac.jp go.jp ad.jp
    com.br net.br org.br gov.br
    com.cn net.cn org.cn gov.cn edu.cn
    co.in net.in org.in gov.in ac.in firm.in
    co.za org.za gov.za ac.za
    com.mx org.mx gob.mx com.ar com.tr com.tw com.hk com.sg com.my com.ph com.pk com.ua
    co.kr or.kr go.kr ac.kr co.il org.il ac.il co.id or.id go.id co.th in.th ac.th
    com.es com.pl net.pl org.pl com.ru com.de co.at or.at gv.at com.eg com.sa com.vn com.ng
    github.io gitlab.io pages.dev workers.dev herokuapp.com appspot.com cloudfront.net
    azurewebsites.net blob.core.windows.net vercel.app netlify.app web.app firebaseapp.com
    s3.amazonaws.com elasticbeanstalk.com amplifyapp.com fly.dev onrender.com
    blogspot.com wordpress.com ngrok.io ngrok-free.app trycloudflare.com
    """.split()  # noqa: SIM905 - a word list reads better than 100 quoted strings
)

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ASCII_HOST = re.compile(r"[a-z0-9_.-]{1,253}")


class _HostError(ValueError):
    pass


def _ip(text: str) -> str | None:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not candidate or not (":" in candidate or candidate[-1].isdigit()):
        return None
    try:
        return ipaddress.ip_address(candidate).compressed
    except ValueError:
        return None


def _to_ascii(name: str) -> str:
    """IDNA-encode a (possibly Unicode) dotted name; raise ``_HostError`` with a hint."""
    if name.isascii():
        return name.lower()
    import idna  # only for non-ASCII names: keeps the common path's imports small

    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as err:
        raise _HostError(f"not a valid internationalised name ({err})") from None


def _check_labels(name: str) -> None:
    if len(name) > 253:
        raise _HostError("longer than 253 characters")
    for label in name.split("."):
        if not label:
            raise _HostError("empty label (two dots in a row, or a leading dot)")
        if not _LABEL.fullmatch(label):
            raise _HostError(
                f"bad label {label!r}: use letters, digits and hyphens, at most 63 characters"
            )


def normalize_pattern(raw: str) -> str:
    """Validate and normalise a host pattern; ``ValueError`` carries a one-line hint."""
    text = raw.strip()
    if text != raw or not text:
        raise _HostError("empty or padded with spaces")
    if text == "*":
        return "*"
    if text.endswith("."):
        text = text[:-1]
    literal = _ip(text)
    if literal is not None:
        return literal
    if "/" in text:  # most likely a CIDR range ('10.0.0.0/8'); say so rather than "bad label"
        raise _HostError(
            "CIDR ranges and paths are not supported in host: give one name, '*.domain' or one "
            "IP address per rule (put URL paths under paths:)"
        )
    wildcard = text.startswith("*.")
    body = text[2:] if wildcard else text
    if "*" in body:
        raise _HostError(
            "'*' is only allowed as a whole first label ('*.example.com') or alone ('*')"
        )
    body = _to_ascii(body)
    _check_labels(body)
    if body.rsplit(".", 1)[-1].isdigit():  # a numeric "TLD": a malformed IP, not a name
        raise _HostError("not a valid IP address, and a name cannot end in a number")
    if wildcard:
        if "." not in body or body in PUBLIC_SUFFIXES:
            raise _HostError(
                f"'*.{body}' would match every site under a public suffix; name the domain"
            )
        return "*." + body
    return body


def normalize_host(raw: str) -> str | None:
    """Normalise a request's host; ``None`` when it cannot be a host name (the caller denies)."""
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]
    if _ASCII_HOST.fullmatch(host):
        if host[-1:].isdigit():
            return _ip(host) or host
        return host if ".." not in host and host[0] != "." and host[-1] != "." else None
    literal = _ip(host)
    if literal is not None:
        return literal
    try:
        encoded = _to_ascii(host)
        _check_labels(encoded)
    except (_HostError, UnicodeError):
        return None
    return encoded


def host_matches(pattern: str, host: str) -> bool:
    """Does a normalised pattern match a normalised host (or, for overlap, another pattern)?"""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def patterns_overlap(a: str, b: str) -> bool:
    return host_matches(a, b) or host_matches(b, a)
