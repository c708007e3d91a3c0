"""Secrets out of responses: the forms an injected secret can come back in, and a streaming
matcher that turns each into the same form built from the agent's placeholder.

An upstream that reflects request headers (an echo or debug endpoint, an error page quoting the
request) would otherwise hand the injected secret to the agent. ``response_scrub`` applies
what is here to every response to a request that carried an injected credential.

Invariants:
- ``needles_for`` lists the forms the proxy injects a secret in: the bare secret and the
  formatted header value; for a ``Basic`` format also the decoded ``user:password`` and the
  password; for AWS bindings the secret access key, the session token and the access key id.
  Each is also listed as JSON-escaped, percent-encoded and HTML-escaped text where those
  differ, and in UTF-8 and Latin-1 where those differ. Each maps to the same form built from
  ``agentenv.placeholder`` (the access key id to the placeholder id). No needle is empty.
- ``Needles.sub`` replaces the leftmost occurrence first and, of needles starting at one
  position, the longest; non-overlapping, left to right (``bytes.replace`` for one needle).
- ``BodyScrub``: the outputs of ``feed`` for any chunking, followed by ``flush``, are exactly
  ``Needles.sub`` of the whole body. It holds back at most ``longest needle - 1`` bytes and
  never a whole body.
- A buffer holding no needle costs one substring search per root needle (one that contains no
  other needle: a buffer without any root holds no needle) and at most one copy.
- Nothing here logs, raises with or returns a secret except as matched input to be replaced.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote

from corral.policy.types import CredentialBinding
from corral.proxy.agentenv import AWS_KEY_ID_PLACEHOLDER, placeholder

__all__ = ["BodyScrub", "Needles", "expand", "needles_for", "scrubber_for"]

Headers = Sequence[tuple[bytes, bytes]]


def _text_forms(text: str) -> list[str]:
    """``text`` and the escaped forms an echo commonly wraps it in."""
    forms = [text]
    as_json = json.dumps(text)[1:-1]
    forms += [as_json, as_json.replace("/", "\\/")]
    forms += [quote(text, safe=""), quote(text, safe="/"), html.escape(text)]
    return forms


def _byte_forms(text: str) -> list[bytes]:
    out = [text.encode("utf-8")]
    with contextlib.suppress(UnicodeEncodeError):
        out.append(text.encode("latin-1"))
    return out


def expand(pairs: Iterable[tuple[str, str]]) -> dict[bytes, bytes]:
    """Each (secret form, placeholder form) in its escaped forms and byte encodings."""
    table: dict[bytes, bytes] = {}
    for secret, replacement in pairs:
        if not secret:
            continue
        for s_text, r_text in zip(_text_forms(secret), _text_forms(replacement), strict=True):
            for s, r in zip(_byte_forms(s_text), _byte_forms(r_text), strict=False):
                if s and s != r:
                    table.setdefault(s, r)
    return table


class Needles:
    """What to look for and what to put instead; one compiled matcher for all of it."""

    __slots__ = ("binding", "firsts", "keep", "pairs", "pattern", "prefixes", "roots",
                 "same_length")

    def __init__(self, binding: str, table: Mapping[bytes, bytes]) -> None:
        table = {s: r for s, r in table.items() if s}
        self.binding = binding
        self.pairs = table
        ordered = sorted(table, key=len, reverse=True)  # longest first: it wins at a position
        # An empty table (the secret is its placeholder) matches nothing: no roots, no pattern.
        self.pattern = re.compile(b"|".join(re.escape(n) for n in ordered) or b"(?!)")
        self.roots = tuple(n for n in ordered if not any(o != n and o in n for o in ordered))
        self.keep = len(ordered[0]) - 1 if ordered else 0
        # Only a tail that could still become a needle is held back, so a stream (SSE) is not
        # delayed by a needle's length at every chunk edge: the proper prefixes of the needles,
        # and where one may start (a needle's first byte).
        self.prefixes = frozenset(n[:i] for n in ordered for i in range(1, len(n)))
        firsts = sorted({n[0] for n in ordered})
        self.firsts = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in firsts) + b"]"
                                 ) if firsts else None
        self.same_length = all(len(s) == len(r) for s, r in table.items())

    def hold_from(self, buf: bytes) -> int:
        """Where the longest tail of ``buf`` that is a proper prefix of a needle starts
        (``len(buf)`` when none is): a match starting before it is decided."""
        if self.firsts is None:
            return len(buf)
        for m in self.firsts.finditer(buf, max(len(buf) - self.keep, 0)):
            if buf[m.start():] in self.prefixes:
                return m.start()
        return len(buf)

    def present(self, data: bytes) -> bool:
        return any(root in data for root in self.roots)

    def sub(self, data: bytes) -> tuple[bytes, int]:
        """``data`` with every needle replaced, and how many were."""
        if not self.present(data):
            return data, 0
        pairs = self.pairs
        return self.pattern.subn(lambda m: pairs[m.group()], data)

    def headers(self, headers: Headers, reason: bytes) -> tuple[list[tuple[bytes, bytes]],
                                                                 bytes, int]:
        """Header names, values and the reason phrase scrubbed; the count of replacements."""
        joined = b"\n".join([reason, *(n + b"\n" + v for n, v in headers)])
        if not self.present(joined):
            return list(headers), reason, 0
        total = 0
        out = []
        for name, value in headers:
            name, a = self.sub(name)
            value, b = self.sub(value)
            total += a + b
            out.append((name, value))
        reason, c = self.sub(reason)
        return out, reason, total + c

    def stream(self) -> BodyScrub:
        return BodyScrub(self)


class BodyScrub:
    """A body scrubbed as it streams: ``feed`` each chunk, ``flush`` at the end."""

    __slots__ = ("_tail", "count", "needles")

    def __init__(self, needles: Needles) -> None:
        self.needles = needles
        self.count = 0
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._tail + data if self._tail else data
        needles = self.needles
        # A match starting before ``boundary`` is decided: no needle starting there can end
        # past ``buf``. Bytes from ``boundary`` on may begin a needle the next chunk ends.
        boundary = needles.hold_from(buf)
        if not needles.present(buf):
            self._tail = buf[boundary:]
            return buf[:boundary] if boundary < len(buf) else buf
        out: list[bytes] = []
        pos = 0
        pairs = needles.pairs
        for match in needles.pattern.finditer(buf):
            start = match.start()
            if start >= boundary:
                break
            out.append(buf[pos:start])
            out.append(pairs[match.group()])
            pos = match.end()
            self.count += 1
        cut = max(pos, boundary)
        out.append(buf[pos:cut])
        self._tail = buf[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The held-back tail, scrubbed (at the end every match in it is decided)."""
        tail, self._tail = self._tail, b""
        out, n = self.needles.sub(tail)
        self.count += n
        return out


def _basic_parts(secret: str) -> list[str]:
    """A ``Basic`` credential's decoded ``user:password`` and its password, if it decodes."""
    try:
        decoded = base64.b64decode(secret.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return []
    _user, sep, password = decoded.partition(":")
    return [decoded, password] if sep else [decoded]


def needles_for(binding: CredentialBinding, secret: Mapping[str, str]) -> Needles:
    """Every form of ``binding``'s secret the proxy injects, mapped to its placeholder form."""
    fake = placeholder(binding.name)
    pairs: list[tuple[str, str]] = []
    if binding.kind == "aws":
        for key in ("secret_access_key", "session_token"):
            if secret.get(key):
                pairs.append((secret[key], fake))
        if secret.get("access_key_id"):
            pairs.append((secret["access_key_id"], AWS_KEY_ID_PLACEHOLDER))
        return Needles(binding.name, expand(pairs))
    value = secret["secret"]
    fmt = binding.format
    pairs.append((fmt.replace("{secret}", value).strip(" \t"), fmt.replace("{secret}", fake)
                  .strip(" \t")))
    pairs.append((value, fake))
    if fmt.lower().startswith("basic "):
        pairs += [(part, fake) for part in _basic_parts(value)]
    return Needles(binding.name, expand(pairs))


_cache: dict[tuple[object, ...], Needles] = {}


def scrubber_for(binding: CredentialBinding, secret: Mapping[str, str]) -> Needles:
    """``needles_for``, built once per binding and secret (the proxy holds both for its life)."""
    key = (binding.name, binding.kind, binding.format, tuple(sorted(secret.items())))
    needles = _cache.get(key)
    if needles is None:
        needles = _cache[key] = needles_for(binding, secret)
    return needles
