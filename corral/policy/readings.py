"""The readings of a request path: every way a plausible upstream server may interpret it.

A path rule is only as strong as its agreement with the server behind it. ``/%61dmin/x`` is
``/admin/x`` to nginx, ``/v1/..;/admin/x`` is ``/admin/x`` to a servlet container, ``/admin./x``
and ``/ADMIN/x`` are ``/admin/x`` to a Windows server. So a request path is not matched once,
as sent: it is read the ways servers read it, and the policy decides on every reading.

Readings (each resolves dot segments, RFC 3986 5.2.4, after its own decoding):

- ``rfc3986``: percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2), other escapes
  kept with upper-case hex; ``;`` is data. What a strict origin server sees.
- ``decoded``: every escape decoded once, empty segments merged (nginx's
  ``ngx_http_parse_complex_uri`` with ``merge_slashes on``; a decoded ``/`` is a separator).
- ``servlet``: path parameters (``;...`` up to the next ``/``) removed from every segment, then
  decoded and normalised (Apache Tomcat's ``CoyoteAdapter.parsePathParameters`` then
  ``normalize``: this is how ``..;`` becomes ``..``).
- ``windows``: the decoded and the servlet readings with ``\\`` as a separator and trailing
  dots and spaces trimmed from every segment (IIS / NTFS name rules, a servlet container on
  Windows).
- ``double``: the decoded reading decoded again, when it still holds escapes (servers and
  frameworks that decode twice).

Case is a reading too, but it matters only for deny rules; the matcher handles it by comparing
case-folded paths with case-folded globs (see ``corral.policy.match``).

Invariants:
- ``readings`` returns distinct strings, the ``rfc3986`` one first; each starts with ``/`` and
  has no dot segments.
- A target no reading can be made of raises ``UnreadablePath`` with a one-line reason: a
  fragment, a target that is not a path, a malformed escape, a control character or NUL raw or
  encoded (at any decoding depth), a non-ASCII byte. The proxy answers those with a 400.
- Plain paths (``plain`` is true) have exactly one reading, the path itself: callers skip the
  work for them, which is what keeps the proxy's hot path unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["UnreadablePath", "plain", "readings"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")


class UnreadablePath(ValueError):
    """The target cannot be read one way; the message says why, in one line."""


def plain(path: str) -> bool:
    """True when every reading equals ``path`` (no escape, parameter, dot or odd separator)."""
    return not ("%" in path or "/." in path or "//" in path or "\\" in path or ";" in path
                or "./" in path or path[-1:] == "." or path[:1] != "/")


def _remove_dots(path: str) -> str:
    if "/." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _decode(path: str) -> str:
    """Decode every escape once; refuse what decodes to a control character."""
    if _ENCODED_CONTROL.search(path):
        raise UnreadablePath("an encoded control character (such as %00) in the path")
    return unquote(path, errors="surrogateescape")


def _strip_params(path: str) -> str:
    return "/".join(segment.partition(";")[0] for segment in path.split("/"))


def _windows(path: str) -> str:
    path = _merge_slashes(path.replace("\\", "/"))
    trimmed = "/".join(seg.rstrip(". ") if seg not in (".", "..") else seg
                       for seg in path.split("/"))
    return _remove_dots(trimmed)


def readings(target: str) -> list[str]:
    """The distinct readings of a request target (origin-form; a query is allowed)."""
    if "#" in target:
        raise UnreadablePath("a fragment ('#') is never part of a request target")
    path = target.partition("?")[0]
    if path[:1] != "/":
        raise UnreadablePath("the request target is not an absolute path")
    if not path.isascii():
        raise UnreadablePath("a non-ASCII byte in the path (percent-encode it)")
    if _CONTROL.search(path):
        raise UnreadablePath("a space or control character in the path")
    if _BAD_ESCAPE.search(path):
        raise UnreadablePath("a '%' that does not start a two-digit hex escape")
    if plain(path):
        return [path]
    rfc = _remove_dots(_ESCAPE.sub(_decode_unreserved, path))
    decoded_once = _decode(path)
    servlet = _remove_dots(_merge_slashes(_decode(_strip_params(path))))
    out = [rfc, _remove_dots(_merge_slashes(decoded_once)), servlet, _windows(decoded_once),
           _windows(servlet)]
    if "%" in decoded_once and _ESCAPE.search(decoded_once):
        twice = _decode(decoded_once)
        out += [_remove_dots(_merge_slashes(twice)), _windows(twice)]
    return list(dict.fromkeys(out))
