"""The meter over the three APIs' wire formats: any chunking gives the whole-body result, usage
is found wherever the format puts it and nowhere else, and malformed, missing or cut short
input gives an incomplete result, never an exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.spend import Meter, Tokens, meter_for
from tests.spend.streams import EVENTS, expected, json_body, sse

APIS = sorted(EVENTS)
counts = st.integers(0, 10**7)
tokens = st.builds(Tokens, counts, counts, counts, counts)
# Text a model could write, including the byte patterns the meter looks for.
texts = st.lists(st.one_of(
    st.text(max_size=40),
    st.sampled_from(['"usage": {"output_tokens": 1}', '{"usage":{', "data: x\n\n", "\r\n\r\n",
                     '"type":"message_delta"', "event: message_delta\n", "\\", '"'])),
    max_size=12)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def run(meter: Meter, data: bytes, cuts: list[int]) -> Meter:
    points = sorted({min(c, len(data)) for c in cuts})
    last = 0
    for p in [*points, len(data)]:
        meter.feed(data[last:p])
        last = p
    return meter


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, texts=texts, eol=st.sampled_from(["\n", "\r\n"]),
       cuts=st.lists(st.integers(0, 5000), max_size=30))
def test_sse_any_chunking_finds_the_final_usage(api: str, t: Tokens, texts: list[str],
                                                 eol: str, cuts: list[int]) -> None:
    data = sse(EVENTS[api](texts, t), eol=eol)
    whole = Meter(api, stream=True)  # type: ignore[arg-type]
    whole.feed(data)
    chunked = run(Meter(api, stream=True), data, cuts)  # type: ignore[arg-type]
    assert chunked.usage == whole.usage
    assert whole.usage.complete
    assert whole.usage.tokens == expected(api, t)
    assert whole.usage.model is not None and whole.usage.request_id is not None


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, texts=texts,
       cuts=st.lists(st.integers(0, 3000), max_size=30), data=st.data())
def test_a_stream_cut_before_its_final_usage_is_incomplete(api: str, t: Tokens,
                                                           texts: list[str], cuts: list[int],
                                                           data: st.DataObject) -> None:
    full = sse(EVENTS[api](texts, t))
    final = full.rindex(b'"usage"')
    end = full.index(b"\n\n", final)
    cut = data.draw(st.integers(0, end + 1))  # anywhere up to the final event's blank line
    meter = run(Meter(api, stream=True), full[:cut], cuts)  # type: ignore[arg-type]
    assert not meter.usage.complete


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, texts=texts)
def test_a_stream_without_final_usage_is_incomplete(api: str, t: Tokens,
                                                    texts: list[str]) -> None:
    meter = Meter(api, stream=True)  # type: ignore[arg-type]
    meter.feed(sse(EVENTS[api](texts, t, final=False)))
    assert not meter.usage.complete


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, text=st.text(max_size=300),
       cuts=st.lists(st.integers(0, 2000), max_size=40))
def test_json_any_chunking_reads_the_top_level_usage(api: str, t: Tokens, text: str,
                                                     cuts: list[int]) -> None:
    body = json_body(api, text, t)
    whole = Meter(api, stream=False)  # type: ignore[arg-type]
    whole.feed(body)
    assert whole.usage.complete and whole.usage.tokens == expected(api, t)
    assert whole.usage.request_id is not None and whole.usage.model is not None
    chunked = run(Meter(api, stream=False), body, cuts)  # type: ignore[arg-type]
    assert chunked.usage == whole.usage


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, text=st.text(max_size=200), data=st.data())
def test_json_cut_short_before_usage_is_incomplete(api: str, t: Tokens, text: str,
                                                   data: st.DataObject) -> None:
    body = json_body(api, text, t)
    cut = data.draw(st.integers(0, body.rindex(b'"usage"') + 20))
    meter = Meter(api, stream=False)  # type: ignore[arg-type]
    meter.feed(body[:cut])
    assert not meter.usage.complete


@SETTINGS
@given(api=st.sampled_from(APIS), stream=st.booleans(), junk=st.binary(max_size=3000),
       cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_arbitrary_bytes_never_raise(api: str, stream: bool, junk: bytes,
                                     cuts: list[int]) -> None:
    meter = run(Meter(api, stream=stream), junk, cuts)  # type: ignore[arg-type]
    usage = meter.close()
    assert usage.tokens.input >= 0 and usage.tokens.output >= 0


@SETTINGS
@given(api=st.sampled_from(APIS), t=tokens, texts=texts, data=st.data())
def test_mutated_streams_never_raise(api: str, t: Tokens, texts: list[str],
                                     data: st.DataObject) -> None:
    raw = bytearray(sse(EVENTS[api](texts, t)))
    for _ in range(data.draw(st.integers(1, 5))):
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at + data.draw(st.integers(0, 8))] = data.draw(st.binary(max_size=8))
    meter = Meter(api, stream=True)  # type: ignore[arg-type]
    for i in range(0, len(raw), 7):
        meter.feed(bytes(raw[i:i + 7]))
    assert all(n >= 0 for n in meter.usage.tokens)


@st.composite
def _openai_usage_event(draw: st.DrawFn, api: str) -> tuple[str | None, object]:
    """An OpenAI event that may or may not hold usage, with or without its model and id."""
    names = (("prompt_tokens", "completion_tokens") if api == "openai.chat" else
             ("input_tokens", "output_tokens"))
    usage = draw(st.one_of(
        st.none(), st.just("text"),
        st.fixed_dictionaries({k: counts for k in names}),  # valid usage
        st.fixed_dictionaries({}, optional={k: st.one_of(counts, st.just(-1), st.just("1"))
                                            for k in names})))
    holder: dict[str, object] = {"usage": usage, "choices": []}
    for key, value in (("model", st.sampled_from(["m1", "m2", 7])),
                       ("id", st.sampled_from(["id1", "id2", None]))):
        if draw(st.booleans()):
            holder[key] = draw(value)
    if api == "openai.chat":
        return None, holder
    kind = draw(st.sampled_from(["response.completed", "response.created",
                                 "response.incomplete", "response.output_text.delta"]))
    return kind, {"type": kind, "response": holder}


@SETTINGS
@given(api=st.sampled_from(["openai.chat", "openai.responses"]), data=st.data(),
       cuts=st.lists(st.integers(0, 3000), max_size=20))
def test_last_usage_first_gives_what_reading_every_hit_gives(
        api: str, data: st.DataObject, cuts: list[int]) -> None:
    # The OpenAI meters try the run's last "usage" first; a meter that reads every hit in
    # order (the Anthropic way) is the reference, on streams with several usage events,
    # some without a model or id, some not usage at all, any chunking.
    events = data.draw(st.lists(_openai_usage_event(api), max_size=8))
    raw = sse(events)
    fast = run(Meter(api, stream=True), raw, cuts)  # type: ignore[arg-type]
    reference = Meter(api, stream=True)  # type: ignore[arg-type]
    reference._parser.last_wins = False  # type: ignore[union-attr]
    reference.feed(raw)
    assert fast.usage == reference.usage


def test_usage_inside_model_text_or_tool_input_is_not_usage() -> None:
    fake = json.dumps({"usage": {"output_tokens": 1}})
    meter = Meter("anthropic.messages", stream=True)
    meter.feed(sse([("content_block_delta", {"type": "content_block_delta", "delta": {
        "type": "input_json_delta", "partial_json": fake}}),
        ("x", {"type": "content_block_delta", "usage": {"output_tokens": 1}})]))
    assert meter.usage.tokens == Tokens() and not meter.usage.complete


def test_anthropic_message_delta_is_cumulative_last_wins() -> None:
    meter = Meter("anthropic.messages", stream=True)
    t = Tokens(input=5, output=9)
    events = EVENTS["anthropic.messages"](["hi"], t)
    events.insert(-2, ("message_delta", {"type": "message_delta", "usage": {
        "output_tokens": 3, "input_tokens": 7}}))
    meter.feed(sse(events))
    assert meter.usage.tokens == Tokens(input=7, output=9)


def test_bad_counts_are_not_usage() -> None:
    for bad in (-1, 1.5, True, "7", None, 10**13):
        meter = Meter("openai.chat", stream=False)
        meter.feed(json.dumps({"usage": {"prompt_tokens": bad, "completion_tokens": 1}}).encode())
        assert not meter.usage.complete, bad


def test_headers_choose_sse_and_request_id() -> None:
    meter = meter_for("openai.chat", [(b"Content-Type", b"text/event-stream; charset=utf-8"),
                                      (b"x-request-id", b"req_42")])
    meter.feed(sse(EVENTS["openai.chat"](["a"], Tokens(1, 2))))
    assert meter.usage.complete and meter.usage.request_id == "req_42"
    assert meter_for("anthropic.messages", [(b"request-id", b"req_7")]).usage.request_id == "req_7"


def test_an_oversized_event_is_skipped_and_the_rest_still_read() -> None:
    from corral.spend.meter import MAX_EVENT

    meter = Meter("anthropic.messages", stream=True)
    meter.feed(b"data: " + b"x" * 1024)
    for _ in range(MAX_EVENT // (1 << 20) + 1):
        meter.feed(b"y" * (1 << 20))
    assert len(meter._parser.buf) < 4  # type: ignore[union-attr]
    meter.feed(b"\n\n" + sse(EVENTS["anthropic.messages"](["z"], Tokens(1, 2))))
    assert meter.usage.complete and meter.usage.tokens == Tokens(1, 2)
