"""A scripted "model" for the fake provider's Anthropic Messages endpoint: it drives an MCP
client (Claude Code) through corral's ``exec`` tool the way a real model would, so the recipe
"Claude Code as an MCP client of ``corral mcp``" runs without a live model.

It acts only on conversations whose user asked for the ``corral exec tool`` (as the recipe's
prompt does); every other request gets the provider's plain answer, so the other tests of the
provider are unaffected. The script, decided from the request alone (the provider keeps no
state between requests), as a real model would act on Claude Code's requests:

- the last user turn carries the ``tool_result`` of an exec call: answer text quoting it
  (``corral exec said: ...``);
- exec (``mcp__corral__exec``: Claude Code names MCP tools ``mcp__SERVER__TOOL``) is not
  offered yet: Claude Code defers MCP tools (and may still be connecting the server), so load
  it with ``ToolSearch`` (``select:mcp__corral__exec``), which waits for the server;
- otherwise call exec: with the command in backticks of the last prompt, or, when that prompt
  says ``retry``, with the arguments of the conversation's last exec call (an approval binds
  the exact arguments).

Each decision is returned with what the provider logs (the command, the tool result it saw),
so a test sees exactly what reached the model.
"""

from __future__ import annotations

import re
from typing import Any

TOOL = "mcp__corral__exec"
SEARCH = "ToolSearch"  # Claude Code defers MCP tools: a model loads them through this first
TRIGGER = "corral exec tool"
COMMAND = re.compile(r"`([^`]+)`")


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def _text(content: Any) -> str:
    """A tool_result's content (a string or text blocks) as one string."""
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


def _prompts(messages: list[dict[str, Any]]) -> list[str]:
    """The user's own words, oldest first: Claude Code adds <system-reminder> text blocks to
    a prompt and notes ("Tool loaded.") to a turn of tool results, which are not prompts."""
    turns = [_blocks(m) for m in messages if m["role"] == "user"]
    return [b["text"] for blocks in turns
            if not any(b.get("type") == "tool_result" for b in blocks) for b in blocks
            if b.get("type") == "text" and not b["text"].lstrip().startswith("<system-reminder>")]


def _calls(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every tool_use of the conversation by id."""
    return {b["id"]: b for m in messages if m.get("role") == "assistant" for b in _blocks(m)
            if b.get("type") == "tool_use"}


def _use(name: str, args: dict[str, Any], n: int) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_fake{n:04d}", "name": name, "input": args}


def _exec_args(prompt: str, calls: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if "retry" in prompt:
        done = [c for c in calls.values() if c.get("name") == TOOL]
        return dict(done[-1].get("input") or {}) if done else None
    found = COMMAND.search(prompt)
    return {"command": found.group(1)} if found else None


def decide(req: dict[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, Any]] | None:
    """(content blocks, stop reason, log fields) for a scripted turn; None: not scripted."""
    # Claude Code may end the list with a "system" message (environment notes): skip those.
    messages = [m for m in req.get("messages") or [] if isinstance(m, dict)
                and m.get("role") in ("user", "assistant")]
    prompts = _prompts(messages)
    if not any(TRIGGER in p for p in prompts) or messages[-1]["role"] != "user":
        return None
    offered = {t.get("name") for t in req.get("tools") or [] if isinstance(t, dict)}
    calls, n = _calls(messages), len(messages)
    args = _exec_args(prompts[-1], calls)
    results = [b for b in _blocks(messages[-1]) if b.get("type") == "tool_result"]
    answered = calls.get(results[-1].get("tool_use_id", "")) if results else None
    if answered is not None and answered.get("name") == TOOL:
        said = _text(results[-1].get("content"))
        return ([{"type": "text", "text": f"corral exec said: {said}"}], "end_turn",
                {"tool_result": said, "is_error": bool(results[-1].get("is_error"))})
    if args is None:
        return None
    if TOOL in offered:
        return [_use(TOOL, args, n)], "tool_use", {"tool_use": args}
    if SEARCH in offered and answered is None:
        return [_use(SEARCH, {"query": f"select:{TOOL}"}, n)], "tool_use", {"search": TOOL}
    return None
