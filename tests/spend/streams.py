"""Wire-format generators for the meter's tests and benchmark: the three APIs as the providers
send them (SSE and JSON), with usage where the real APIs put it."""

from __future__ import annotations

import json
from typing import Any

from corral.spend import Tokens


def sse(events: list[tuple[str | None, Any]], *, eol: str = "\n") -> bytes:
    out = []
    for name, data in events:
        head = f"event: {name}{eol}" if name else ""
        payload = data if isinstance(data, str) else json.dumps(data)
        out.append(f"{head}data: {payload}{eol}{eol}")
    return "".join(out).encode()


def anthropic_events(texts: list[str], t: Tokens, *, final: bool = True) -> list[Any]:
    events: list[Any] = [("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "usage": {
            "input_tokens": t.input, "output_tokens": 1,
            "cache_creation_input_tokens": t.cache_write,
            "cache_read_input_tokens": t.cache_read}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": x}})
               for x in texts]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if final:
        events.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "end_turn"}, "usage": {"output_tokens": t.output}}))
        events.append(("message_stop", {"type": "message_stop"}))
    return events


def chat_events(texts: list[str], t: Tokens, *, final: bool = True) -> list[Any]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    events: list[Any] = [(None, {**base, "choices": [{"index": 0, "delta": {"content": x}}],
                                 "usage": None}) for x in texts]
    if final:
        events.append((None, {**base, "choices": [], "usage": {
            "prompt_tokens": t.input + t.cache_read, "completion_tokens": t.output,
            "total_tokens": t.input + t.cache_read + t.output,
            "prompt_tokens_details": {"cached_tokens": t.cache_read}}}))
    events.append((None, "[DONE]"))
    return events


def responses_events(texts: list[str], t: Tokens, *, final: bool = True) -> list[Any]:
    resp = {"id": "resp_1", "object": "response", "model": "gpt-4.1", "status": "in_progress",
            "output": [], "usage": None}
    events: list[Any] = [("response.created", {"type": "response.created", "response": resp})]
    events += [("response.output_text.delta", {"type": "response.output_text.delta",
                                               "delta": x}) for x in texts]
    if final:
        done = {**resp, "status": "completed", "output": [{"type": "message", "content": [
            {"type": "output_text", "text": "".join(texts)}]}], "usage": {
            "input_tokens": t.input + t.cache_read, "output_tokens": t.output,
            "input_tokens_details": {"cached_tokens": t.cache_read}, "total_tokens": 0}}
        events.append(("response.completed", {"type": "response.completed", "response": done}))
    return events


def json_body(api: str, text: str, t: Tokens) -> bytes:
    if api == "anthropic.messages":
        obj: dict[str, Any] = {
            "id": "msg_01", "type": "message", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text},
                        {"type": "tool_use", "input": {"usage": {"input_tokens": 1,
                                                                 "output_tokens": 1}}}],
            "usage": {"input_tokens": t.input, "output_tokens": t.output,
                      "cache_creation_input_tokens": t.cache_write,
                      "cache_read_input_tokens": t.cache_read}}
    elif api == "openai.chat":
        obj = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [
            {"message": {"role": "assistant", "content": text}}], "usage": {
            "prompt_tokens": t.input + t.cache_read, "completion_tokens": t.output,
            "prompt_tokens_details": {"cached_tokens": t.cache_read}}}
    else:
        obj = {"id": "resp_1", "model": "gpt-4.1", "output": [{"type": "message", "content": [
            {"type": "output_text", "text": text}]}], "usage": {
            "input_tokens": t.input + t.cache_read, "output_tokens": t.output,
            "input_tokens_details": {"cached_tokens": t.cache_read}}}
    return json.dumps(obj).encode()


EVENTS = {"anthropic.messages": anthropic_events, "openai.chat": chat_events,
          "openai.responses": responses_events}


def expected(api: str, t: Tokens) -> Tokens:
    return t if api == "anthropic.messages" else t._replace(cache_write=0)
