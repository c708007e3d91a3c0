"""The meter: reads a provider's response as it streams past, chunk by chunk, and reports the
tokens it used (``Usage``) without buffering the body or decoding every event.

Three APIs, each as JSON or server-sent events (SSE, chosen by the response's Content-Type):

- ``anthropic.messages``: ``message_start`` (``message.usage``) then ``message_delta``
  (``usage``, cumulative: the last value of each field wins); JSON: the top-level ``usage``.
- ``openai.chat``: the chunk whose ``usage`` is an object (sent last when the request asked for
  ``stream_options.include_usage``; see ``corral.spend.request``); JSON: the top-level
  ``usage``.
- ``openai.responses``: ``response.completed`` (or ``.incomplete``/``.failed``) event's
  ``response.usage``; JSON: the top-level ``usage``.

How (the hot path): SSE bytes are searched for ``"usage"`` followed by ``:`` and ``{`` with one
regex over each run of whole events; only the event around a hit is JSON-decoded. Inside a
JSON string every ``"`` is escaped, so text a model writes can never form that byte pattern;
and a decoded event is only read at the exact place its API puts usage. For the two OpenAI
APIs a usage event replaces everything earlier ones set (tokens, model, id), so the run's last
``"usage"`` is tried first: when its event is a usage event naming model and id, the earlier
hits cannot change the result and the forward scan is skipped (the usual case: the one usage
chunk ends the response, and the others say ``"usage": null``). A JSON body goes
through a small tokenizer that tracks nesting depth and copies only the top-level ``usage``
object (bounded) and the ``model``/``id`` strings.

Invariants:
- ``feed`` never raises and holds at most one unfinished event (bounded by ``MAX_EVENT``; a
  larger one is skipped, losing its usage, which leaves the result incomplete) plus a few KiB.
- Any split of the same bytes into chunks gives the same ``Usage`` as feeding them whole.
- ``complete`` is True only when the API's final usage was read; malformed, missing or cut
  short all give ``complete=False`` (the caller charges the whole reservation).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

from corral.spend.usage import Tokens, Usage

__all__ = ["MAX_EVENT", "Api", "Meter", "meter_for"]

Api = Literal["anthropic.messages", "openai.chat", "openai.responses"]
MAX_EVENT = 16 << 20  # one SSE event: Responses' response.completed repeats the whole output
_MAX_CARRY = 4096  # a top-level JSON key or short string waiting for its next chunk
_MAX_USAGE = 64 << 10  # the top-level JSON "usage" object
_MAX_TOKENS = 10**12  # beyond any real count: a larger "count" is garbage, not usage

_USAGE = re.compile(rb'"usage"[ \t\n]*:[ \t\n]*\{')
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]|"')
_STR_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"')
_STR_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')
_WS = re.compile(rb"[ \t\r\n]*")
_WANTED = (b'"usage"', b'"model"', b'"id"')
_FINAL_RESPONSES = ("response.completed", "response.incomplete", "response.failed")


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= _MAX_TOKENS else None


def _details(usage: dict[str, Any], key: str) -> int:
    sub = usage.get(key)
    return (_count(sub.get("cached_tokens")) or 0) if isinstance(sub, dict) else 0


def _anthropic_fields(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    out = {}
    for src, dst in (("input_tokens", "input"), ("output_tokens", "output"),
                     ("cache_creation_input_tokens", "cache_write"),
                     ("cache_read_input_tokens", "cache_read")):
        n = _count(usage.get(src))
        if n is not None:
            out[dst] = n
    return out


def _openai_fields(usage: Any, api: Api) -> dict[str, int] | None:
    """OpenAI counts cached tokens inside the input count: split them out."""
    if not isinstance(usage, dict):
        return None
    names = ("prompt_tokens", "completion_tokens", "prompt_tokens_details") if api == \
        "openai.chat" else ("input_tokens", "output_tokens", "input_tokens_details")
    total, output = _count(usage.get(names[0])), _count(usage.get(names[1]))
    if total is None or output is None:
        return None
    cached = min(_details(usage, names[2]), total)
    return {"input": total - cached, "output": output, "cache_read": cached, "cache_write": 0}


class Meter:
    """Feed it the response body's chunks in order, then ``close()`` for the result."""

    def __init__(self, api: Api, *, stream: bool, request_id: str | None = None) -> None:
        self.api = api
        self._fields: dict[str, int] = {}
        self._complete = False
        self._model: str | None = None
        self._request_id = request_id
        self._body_id: str | None = None
        self._parser: _Sse | _Json = (_Sse(self._event, last_wins=api != "anthropic.messages")
                                      if stream else _Json(self._top))

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.feed(chunk)
        except Exception:  # a meter never breaks the response it watches
            self._parser.failed = True

    def close(self) -> Usage:
        return self.usage

    @property
    def usage(self) -> Usage:
        f = self._fields
        tokens = Tokens(f.get("input", 0), f.get("output", 0), f.get("cache_write", 0),
                        f.get("cache_read", 0))
        return Usage(tokens, self._complete and not self._parser.failed, self._model,
                     self._request_id or self._body_id)

    def _ids(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("model"), str):
            self._model = obj["model"][:200]
        if isinstance(obj.get("id"), str):
            self._body_id = obj["id"][:200]

    def _event(self, data: bytes) -> bool:
        """Read one event holding a usage object; True when it settled everything a later
        event could (an OpenAI usage event with its model and id: nothing earlier matters)."""
        obj = json.loads(data)
        if not isinstance(obj, dict):
            return False
        kind = obj.get("type")
        if self.api == "anthropic.messages":
            if kind == "message_start" and isinstance(obj.get("message"), dict):
                self._ids(obj["message"])
                self._fields.update(_anthropic_fields(obj["message"].get("usage")))
            elif kind == "message_delta":
                found = _anthropic_fields(obj.get("usage"))
                self._fields.update(found)
                if "output" in found:
                    self._complete = True
        elif self.api == "openai.chat" or kind in _FINAL_RESPONSES:
            holder = obj if self.api == "openai.chat" else obj.get("response")
            if isinstance(holder, dict):
                fields = _openai_fields(holder.get("usage"), self.api)
                if fields is not None:
                    self._ids(holder)
                    self._fields, self._complete = fields, True
                    return isinstance(holder.get("model"), str) and isinstance(
                        holder.get("id"), str)
        return False

    def _top(self, key: str, value: Any) -> None:
        if key == "usage":
            if self.api == "anthropic.messages":
                self._fields = _anthropic_fields(value)
                self._complete = "input" in self._fields and "output" in self._fields
            else:
                fields = _openai_fields(value, self.api)
                self._fields, self._complete = fields or {}, fields is not None
        elif key == "model":
            self._model = value[:200]
        else:
            self._body_id = value[:200]


class _Sse:
    """Splits the stream into events and hands the data of those holding a usage object on."""

    def __init__(self, on_data: Callable[[bytes], bool], *, last_wins: bool = False) -> None:
        self.on_data = on_data
        self.last_wins = last_wins  # see the module's text: the last usage event decides
        self.buf = bytearray()
        self.cr = False  # the last chunk ended in CR: it may be half of a CRLF
        self.skipping = False  # inside an event larger than MAX_EVENT
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        if self.cr:
            chunk, self.cr = b"\r" + chunk, False
        if b"\r" in chunk:  # CRLF and CR line ends: rare; normalise to LF
            if chunk.endswith(b"\r"):
                chunk, self.cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self.buf
        start = max(len(buf) - 1, 0)  # a blank line may straddle two chunks
        buf += chunk
        end = buf.rfind(b"\n\n", start)
        if self.skipping:
            first = buf.find(b"\n\n", start)
            if first < 0:
                del buf[:-1]
                return
            del buf[:first + 2]
            self.skipping = False
            end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > MAX_EVENT:
                self.skipping = True
                del buf[:-1]
            return
        end += 2
        self._scan(buf, end)
        del buf[:end]

    def _scan(self, buf: bytearray, end: int) -> None:
        if self.last_wins:
            # Every hit starts with "usage": if the last one is a hit, no hit follows it. Its
            # event read first changes nothing the forward scan would not set again.
            at = buf.rfind(b'"usage"', 0, end)
            if at >= 0 and _USAGE.match(buf, at) and self._read(buf, at, end)[1]:
                return
        done = 0
        for hit in _USAGE.finditer(buf, 0, end):
            at = hit.start()
            if at >= done:  # else a second hit in an event already read
                done = self._read(buf, at, end)[0]

    def _read(self, buf: bytearray, at: int, end: int) -> tuple[int, bool]:
        """Hand on the event around ``at``: (where it ends, whether it settled the result)."""
        first = buf.rfind(b"\n\n", 0, at)
        first = 0 if first < 0 else first + 2
        done = buf.find(b"\n\n", at, end)
        try:
            return done, self.on_data(_data_of(buf[first:done].split(b"\n")))
        except (ValueError, RecursionError):
            return done, False  # not JSON: that event carried no usable usage


def _data_of(lines: Iterable[bytes | bytearray]) -> bytes:
    data: list[bytes | bytearray] = []
    for line in lines:
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(data)


class _Json:
    """The top level of one JSON object: its depth-1 ``usage`` object, ``model`` and ``id``."""

    def __init__(self, on_value: Callable[[str, Any], None]) -> None:
        self.on_value = on_value
        self.depth = 0
        self.carry = b""
        self.in_string = False  # inside a string too long (or too deep) to be of interest
        self.key: bytes | None = None  # a wanted depth-1 key whose value comes next
        self.capture: bytearray | None = None
        self.cap_from: int | None = None  # where the capture resumes in this chunk
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return
        data = self.carry + chunk if self.carry else chunk
        self.carry = b""
        self.cap_from = 0 if self.capture is not None else None
        i = 0
        if self.in_string:
            rest = _STR_REST.match(data)
            if rest is None:
                self._skip_string(data, 0)
                return
            i, self.in_string = rest.end(), False
        keep = len(data)
        while not self.failed:
            tok = _TOKEN.search(data, i)
            if tok is None:
                break
            s, i = tok.span()
            c = data[s]
            if c == 0x22:  # '"'
                stop = self._string(data, s, i)
                if stop is not None:
                    keep = stop
                    break
            elif c in (0x7B, 0x5B):  # '{' '['
                if self.depth == 1 and self.key == b'"usage"' and c == 0x7B:
                    self.capture, self.cap_from = bytearray(), s
                self.key = None
                self.depth += 1
            else:
                self._close(data, i)
        if not self.in_string:
            self._captured(data, keep)

    def _string(self, data: bytes, s: int, e: int) -> int | None:
        """A string token at ``s``; where to stop reading this chunk, or None to go on."""
        if e - s == 1:  # unterminated: the rest of the chunk is inside a string
            if self.depth == 1 and len(data) - s <= _MAX_CARRY:
                self.carry = data[s:]
                return s
            self._skip_string(data, s + 1)
            return len(data)
        if self.depth != 1:
            return None
        after = _WS.match(data, e)
        j = after.end() if after else e
        if j == len(data) and j - s <= _MAX_CARRY:
            self.carry = data[s:]  # key or value? the next chunk's first byte says
            return s
        if j < len(data) and data[j] == 0x3A:  # ':' - a key
            self.key = data[s:e] if data[s:e] in _WANTED else None
            return None
        if self.key in (b'"model"', b'"id"'):
            self.on_value(self.key[1:-1].decode(), json.loads(data[s:e]))
        self.key = None
        return None

    def _close(self, data: bytes, e: int) -> None:
        self.depth -= 1
        if self.depth < 0:
            self.failed = True
        elif self.depth == 1 and self.capture is not None and self.cap_from is not None:
            self.capture += data[self.cap_from:e]
            captured, self.capture, self.cap_from = self.capture, None, None
            with contextlib.suppress(ValueError, RecursionError):
                self.on_value("usage", json.loads(captured))

    def _skip_string(self, data: bytes, at: int) -> None:
        # No closing quote after ``at``: all that follows is string (up to a lone backslash,
        # kept to pair with the next chunk's first byte).
        self.in_string = True
        body = _STR_BODY.match(data, at)
        keep = body.end() if body else at
        self._captured(data, keep)
        self.carry = data[keep:]

    def _captured(self, data: bytes, keep: int) -> None:
        if self.capture is None or self.cap_from is None:
            return
        self.capture += data[self.cap_from:keep]
        self.cap_from = None
        if len(self.capture) > _MAX_USAGE:
            self.capture = None  # not a usage object: let it go (the result stays incomplete)


def meter_for(api: Api, headers: Iterable[tuple[bytes, bytes]]) -> Meter:
    """A meter for a response with these headers (SSE if ``text/event-stream``; the provider's
    request id from ``request-id``/``x-request-id``)."""
    stream, request_id = False, None
    for name, value in headers:
        low = name.lower()
        if low == b"content-type":
            stream = value.split(b";")[0].strip().lower() == b"text/event-stream"
        elif low in (b"request-id", b"x-request-id") and request_id is None:
            request_id = value.decode("ascii", "replace")[:200]
    return Meter(api, stream=stream, request_id=request_id)
