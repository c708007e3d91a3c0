"""The streaming scrubber and the content decoder on their own: properties over whole classes of
bodies and chunkings, the needles a binding yields, and the cost of a large clean body."""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from corral.policy.types import CredentialBinding, Origin
from corral.proxy.agentenv import AWS_KEY_ID_PLACEHOLDER, placeholder
from corral.proxy.decode import DecodeError, Decoder, UnsupportedEncoding, codings
from corral.proxy.scrub import Needles, needles_for

ORIGIN = Origin(Path("p.yaml"), 1)


def _binding(**kw: object) -> CredentialBinding:
    return CredentialBinding(name=str(kw.pop("name", "tok")), origin=ORIGIN, **kw)  # type: ignore[arg-type]


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _stream(needles: Needles, chunks: list[bytes]) -> tuple[bytes, int]:
    body = needles.stream()
    out = b"".join(body.feed(c) for c in chunks) + body.flush()
    return out, body.count


def _reference_sub(table: dict[bytes, bytes], body: bytes) -> tuple[bytes, int]:
    """Leftmost match first, the longest needle at a position, left to right: by hand."""
    out, i, n = bytearray(), 0, 0
    by_length = sorted(table, key=len, reverse=True)
    while i < len(body):
        hit = next((k for k in by_length if body.startswith(k, i)), None)
        if hit is None:
            out.append(body[i])
            i += 1
        else:
            out += table[hit]
            i += len(hit)
            n += 1
    return bytes(out), n


# Arbitrary bytes, and a two-letter alphabet where needles overlap and prefix each other.
secrets_ = st.one_of(st.binary(min_size=1, max_size=40),
                     st.text("ab", min_size=1, max_size=6).map(str.encode))
filler = st.one_of(st.binary(max_size=300), st.text("abc", max_size=30).map(str.encode))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    needle=st.binary(min_size=1, max_size=40),
    pieces=st.lists(filler, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_streaming_equals_replace_for_any_chunking(needle: bytes, pieces: list[bytes],
                                                   cuts: list[int]) -> None:
    """Needles inserted between random pieces, the body cut anywhere: the streamed output is
    ``body.replace(needle, placeholder)`` and the needle never survives."""
    fake = placeholder("tok").encode()
    assume(needle not in fake)  # a needle inside its own placeholder cannot be removed
    needles = Needles("tok", {needle: fake})
    body = needle.join(pieces)
    out, count = _stream(needles, _chunks(body, cuts))
    assert out == body.replace(needle, fake)
    # No needle survives: every occurrence left in the output overlaps an inserted placeholder
    # (it can only be made of placeholder bytes and their neighbours, never passed through).
    inserted, at = [], 0
    for piece in body.split(needle)[:-1]:
        at += len(piece)
        inserted.append((at, at + len(fake)))
        at += len(fake)
    at = out.find(needle)
    while at != -1:
        assert any(a < at + len(needle) and at < b for a, b in inserted), (out, at)
        at = out.find(needle, at + 1)
    assert count == body.count(needle)
    scrub = needles.stream()
    for chunk in _chunks(body, cuts):  # never more than len(needle) - 1 bytes held back
        scrub.feed(chunk)
        assert len(scrub._tail) <= len(needle) - 1


@settings(max_examples=300, deadline=None)
@given(
    raw_needles=st.lists(secrets_, min_size=1, max_size=4, unique=True),
    picks=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=10),
    pieces=st.lists(filler, min_size=11, max_size=11),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
)
def test_many_needles_any_bytes_equal_whole_body_sub(raw_needles: list[bytes], picks: list[int],
                                                     pieces: list[bytes], cuts: list[int]) -> None:
    """Several needles (overlapping, prefixes of each other, arbitrary bytes): streaming equals
    substituting the whole body at once, whatever the chunking."""
    table = {n: b"<%d>" % i for i, n in enumerate(raw_needles)}
    needles = Needles("tok", table)
    body = pieces[0]
    for i, pick in enumerate(picks):
        body += raw_needles[pick % len(raw_needles)] + pieces[i + 1]
    whole, n = _reference_sub(table, body)
    out, count = _stream(needles, _chunks(body, cuts))
    assert out == whole and count == n
    assert needles.sub(body) == (whole, n)


@settings(max_examples=300, deadline=None)
@given(needle=st.binary(min_size=2, max_size=40), chunk=st.binary(max_size=200))
def test_only_a_possible_needle_start_is_held_back(needle: bytes, chunk: bytes) -> None:
    """A live stream (SSE) is not delayed at chunk edges: everything is passed on at once
    except a tail that is a proper prefix of a needle (it may end in the next chunk)."""
    body = Needles("tok", {needle: b"X" * len(needle)}).stream()
    out = body.feed(chunk)
    held = len(chunk) - len(out) if needle not in chunk else None
    if held is not None:
        assert out == chunk[: len(out)]
        if held:
            assert needle.startswith(chunk[-held:]) and held < len(needle)
        assert not any(needle.startswith(chunk[i:]) for i in range(len(chunk) - held
                                                                    - len(needle) + 1,
                                                                    len(chunk) - held)
                       if i >= 0), "a longer possible start exists"


def test_an_sse_event_passes_whole_at_once() -> None:
    needles = needles_for(_binding(header="Authorization", format="Bearer {secret}"),
                          {"secret": "sk-SECRET-123"})
    body = needles.stream()
    event = b'event: content_block_delta\ndata: {"delta": {"text": "hi"}}\n\n'
    assert body.feed(event) == event


def test_one_byte_chunks_and_a_needle_split_everywhere() -> None:
    needles = needles_for(_binding(), {"secret": "S3CRET-VALUE"})
    body = b"x" * 5 + b"S3CRET-VALUE" + b"Bearer S3CRET-VALUE" + b"S3CRET-VALU"
    out, count = _stream(needles, [bytes([b]) for b in body])
    fake = placeholder("tok").encode()
    assert out == b"x" * 5 + fake + b"Bearer " + fake + b"S3CRET-VALU" and count == 2


def test_needles_of_a_header_binding() -> None:
    secret = "ab/c+d\"e&f"
    needles = needles_for(_binding(format="token {secret}"), {"secret": secret})
    fake = placeholder("tok")
    pairs = {k.decode(): v.decode() for k, v in needles.pairs.items()}
    assert pairs[secret] == fake and pairs[f"token {secret}"] == f"token {fake}"
    assert pairs[json.dumps(secret)[1:-1]] == fake
    assert pairs[json.dumps(secret)[1:-1].replace("/", "\\/")] == fake
    assert pairs[quote(secret, safe="")] == fake
    assert "ab/c+d&quot;e&amp;f" in pairs
    assert not needles.same_length


def test_needles_of_basic_and_aws() -> None:
    secret = base64.b64encode(b"alice:pa55-w0rd!").decode()
    basic = needles_for(_binding(format="Basic {secret}"), {"secret": secret})
    keys = set(basic.pairs)
    assert {secret.encode(), f"Basic {secret}".encode(), b"alice:pa55-w0rd!", b"pa55-w0rd!"} <= keys
    aws = needles_for(
        _binding(name="aws", kind="aws"),
        {"access_key_id": "AKIAREALKEY000000001", "secret_access_key": "real/secret+key",
         "session_token": "TOKEN-abc"},
    )
    assert aws.pairs[b"real/secret+key"] == placeholder("aws").encode()
    assert aws.pairs[b"TOKEN-abc"] == placeholder("aws").encode()
    assert aws.pairs[b"AKIAREALKEY000000001"] == AWS_KEY_ID_PLACEHOLDER.encode()


def test_headers_and_reason_are_scrubbed() -> None:
    needles = needles_for(_binding(), {"secret": "S3CRET"})
    heads = [(b"x-echo-authorization", b"Bearer S3CRET"), (b"x-S3CRET", b"1"), (b"a", b"b")]
    out, reason, count = needles.headers(heads, b"bad S3CRET")
    fake = placeholder("tok").encode()
    assert out == [(b"x-echo-authorization", b"Bearer " + fake), (b"x-" + fake, b"1"),
                   (b"a", b"b")]
    assert reason == b"bad " + fake and count == 3


def test_a_secret_equal_to_its_placeholder_matches_nothing() -> None:
    needles = needles_for(_binding(format="{secret}"), {"secret": placeholder("tok")})
    assert needles.roots == () and _stream(needles, [b"abc", b"def"]) == (b"abcdef", 0)


def test_clean_10mb_body_costs_little() -> None:
    """A 10 MB body without the secret, in 16 KiB TLS records: well under a second."""
    needles = needles_for(_binding(), {"secret": "ghp_" + "x1y2" * 9})
    record = bytes(range(256)) * 64
    body = needles.stream()
    start = time.perf_counter()
    total = 0
    for _ in range(640):
        total += len(body.feed(record))
    total += len(body.flush())
    elapsed = time.perf_counter() - start
    assert total == 640 * len(record)
    assert elapsed < 0.25, elapsed


# -- content decoding ------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    coding=st.sampled_from(["gzip", "x-gzip", "deflate", "deflate-raw", "gzip, deflate"]),
)
def test_decoder_undoes_codings_for_any_chunking(data: bytes, cuts: list[int], coding: str) -> None:
    if coding == "deflate-raw":
        enc = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        encoded, coding = enc.compress(data) + enc.flush(), "deflate"
    elif coding == "gzip, deflate":
        encoded = zlib.compress(gzip.compress(data))
    elif coding == "deflate":
        encoded = zlib.compress(data)
    else:
        encoded = gzip.compress(data)
    decoder = Decoder(codings([(b"Content-Encoding", coding.encode())]))
    out = b"".join(p for c in _chunks(encoded, cuts) for p in decoder.feed(c))
    out += b"".join(decoder.finish())
    assert out == data


def test_decoder_pieces_are_bounded_and_members_concatenate() -> None:
    bomb = gzip.compress(b"\0" * 5_000_000)
    decoder = Decoder(["gzip"])
    pieces = list(decoder.feed(bomb + gzip.compress(b"tail")))
    assert max(len(p) for p in pieces) <= 256 * 1024
    assert b"".join(pieces) == b"\0" * 5_000_000 + b"tail"


def test_decoder_refuses_what_it_cannot_read() -> None:
    with pytest.raises(UnsupportedEncoding):
        Decoder(["br"])
    with pytest.raises(UnsupportedEncoding):
        Decoder(["gzip", "zstd"])
    with pytest.raises(DecodeError):
        list(Decoder(["gzip"]).feed(b"not gzip at all"))
    assert codings([(b"content-encoding", b"identity")]) == []
