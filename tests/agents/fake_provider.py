"""A fake LLM provider for the agent recipes: Anthropic Messages, OpenAI Chat Completions and
OpenAI Responses (what Codex CLI speaks) in their real wire formats (JSON and server-sent
events), over TLS, in a test network namespace.

Usage: fake_provider.py CERT KEY PORT. The keys it accepts come from FAKE_ANTHROPIC_KEY and
FAKE_OPENAI_KEY; a request with any other key gets the provider's own 401 error shape, so an
agent only gets an answer when the proxy injected the real secret. Each answer says which
endpoint and whether streaming was used; requests are logged as JSON lines on stdout.

An OpenAI stream that asks for ``stream_options.include_usage`` gets ``"usage": null`` in each
chunk and a final usage chunk, as the real API sends. With FAKE_HOLD_FILE set, every stream
stops after its first event until that file exists (the spend tests hold admitted streams open
while the rest of their requests are decided).

A conversation asking for the ``corral exec tool`` is answered by the scripted model of
``fake_model.py`` (tool calls streamed as ``tool_use`` blocks, as the real API does) and its
decisions are logged as ``{"api": "anthropic-script", ...}`` lines.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fake_model  # the scripted tool-calling turns (the script's own directory)

KEYS = {"anthropic": os.environ["FAKE_ANTHROPIC_KEY"], "openai": os.environ["FAKE_OPENAI_KEY"]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return None

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _sse(self, events: list[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        hold = os.environ.get("FAKE_HOLD_FILE")
        for n, (name, data) in enumerate(events):
            if n == 1 and hold:
                deadline = time.monotonic() + 120
                while not os.path.exists(hold) and time.monotonic() < deadline:
                    time.sleep(0.01)
            head = f"event: {name}\n" if name else ""
            payload = data if isinstance(data, str) else json.dumps(data)
            self.wfile.write(f"{head}data: {payload}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self) -> None:
        # Model lookups (GET /v1/models/ID, as Claude Code makes at start): any model exists.
        print(json.dumps({"api": "get", "path": self.path}), flush=True)
        if self.path.startswith("/v1/models/"):
            model = self.path.split("?")[0].rsplit("/", 1)[1]
            self._json(200, {"type": "model", "id": model, "display_name": model,
                             "created_at": "2025-01-01T00:00:00Z"})
        else:
            self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                        "message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(length) or b"{}")
        stream = bool(req.get("stream"))
        path = self.path.split("?")[0]  # Claude Code adds ?beta=true
        if path == "/v1/messages":
            ok = self.headers.get("x-api-key") == KEYS["anthropic"]
            print(json.dumps({"api": "anthropic", "key_ok": ok, "stream": stream}), flush=True)
            if not ok:
                self._json(401, {"type": "error", "error": {
                    "type": "authentication_error", "message": "invalid x-api-key"}})
                return
            self._anthropic(req, stream)
        elif path == "/v1/chat/completions":
            ok = self.headers.get("Authorization") == f"Bearer {KEYS['openai']}"
            line = {"api": "openai", "key_ok": ok, "stream": stream}
            if isinstance(req.get("stream_options"), dict):
                line["include_usage"] = req["stream_options"].get("include_usage") is True
            print(json.dumps(line), flush=True)
            if not ok:
                self._json(401, {"error": {"message": "Incorrect API key provided",
                                           "type": "invalid_request_error", "param": None,
                                           "code": "invalid_api_key"}})
                return
            self._openai(req, stream)
        elif path == "/v1/responses":
            ok = self.headers.get("Authorization") == f"Bearer {KEYS['openai']}"
            print(json.dumps({"api": "responses", "key_ok": ok, "stream": stream}), flush=True)
            if not ok:
                self._json(401, {"error": {"message": "Incorrect API key provided",
                                           "type": "invalid_request_error", "param": None,
                                           "code": "invalid_api_key"}})
                return
            self._responses(req, stream)
        else:
            print(json.dumps({"api": "post", "path": self.path}), flush=True)
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def _anthropic(self, req: dict[str, Any], stream: bool) -> None:
        text = f"hello from fake anthropic ({'stream' if stream else 'json'})"
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        stop, scripted = "end_turn", fake_model.decide(req)
        if scripted is not None:
            content, stop, logged = scripted
            print(json.dumps({"api": "anthropic-script", **logged}), flush=True)
        usage = {"input_tokens": 5, "output_tokens": 7}
        message = {"id": "msg_fake", "type": "message", "role": "assistant",
                   "model": req.get("model", "claude"), "stop_reason": stop,
                   "stop_sequence": None, "usage": usage, "content": content}
        if not stream:
            self._json(200, message)
            return
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {"input_tokens": 5, "output_tokens": 0}}
        events: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(content):
            events += _anthropic_block(index, block)
        events += [
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 7}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._sse(events)

    def _openai(self, req: dict[str, Any], stream: bool) -> None:
        text = f"hello from fake openai ({'stream' if stream else 'json'})"
        base = {"id": "chatcmpl-fake", "created": 1700000000,
                "model": req.get("model", "gpt"), "system_fingerprint": None}
        if not stream:
            self._json(200, {**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
            return
        chunks = [{**base, "object": "chat.completion.chunk", "choices": [{
            "index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]}
            for i, w in enumerate(text.split(" "))]
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [{
            "index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = req.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            chunks = [{**c, "usage": None} for c in chunks]
            chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": {
                "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
        self._sse([*[(None, c) for c in chunks], (None, "[DONE]")])


    def _responses(self, req: dict[str, Any], stream: bool) -> None:
        """OpenAI's Responses API (what Codex CLI speaks): one assistant message."""
        text = f"hello from fake responses ({'stream' if stream else 'json'})"
        msg_id, part = "msg_fake", {"type": "output_text", "text": text, "annotations": []}
        item = {"id": msg_id, "type": "message", "status": "completed", "role": "assistant",
                "content": [part]}
        usage = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 12}
        done = {"id": "resp_fake", "object": "response", "created_at": 1700000000,
                "status": "completed", "model": req.get("model", "gpt"), "output": [item],
                "usage": usage, "error": None, "incomplete_details": None}
        if not stream:
            self._json(200, done)
            return
        begun = {**done, "status": "in_progress", "output": [], "usage": None}
        where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": begun}),
            ("response.in_progress", {"response": begun}),
            ("response.output_item.added", {"output_index": 0, "item": {
                **item, "status": "in_progress", "content": []}}),
            ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
            *[("response.output_text.delta", {**where, "delta": w if i == 0 else " " + w})
              for i, w in enumerate(text.split(" "))],
            ("response.output_text.done", {**where, "text": text}),
            ("response.content_part.done", {**where, "part": part}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": done}),
        ]
        self._sse([(name, {"type": name, "sequence_number": n, **data})
                   for n, (name, data) in enumerate(events)])


def _anthropic_block(index: int, block: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """One content block as Messages stream events: text word by word, a tool call's input
    as input_json_delta fragments (as the real API streams them)."""
    if block["type"] == "tool_use":
        first = {**block, "input": {}}
        raw = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": raw[i:i + 16]}
                  for i in range(0, len(raw), 16)]
    else:
        first = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        deltas = [{"type": "text_delta", "text": w if i == 0 else " " + w}
                  for i, w in enumerate(words)]
    return [("content_block_start", {"type": "content_block_start", "index": index,
                                     "content_block": first}),
            *[("content_block_delta", {"type": "content_block_delta", "index": index,
                                       "delta": d}) for d in deltas],
            ("content_block_stop", {"type": "content_block_stop", "index": index})]


def main() -> None:
    cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
