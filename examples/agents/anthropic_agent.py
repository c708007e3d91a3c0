"""A minimal agent on the official Anthropic SDK (docs/agents.md). Inside `corral run` it holds
only a placeholder in ANTHROPIC_API_KEY; the proxy puts the real key on the wire."""

import anthropic

client = anthropic.Anthropic()  # reads ANTHROPIC_API_KEY (and ANTHROPIC_BASE_URL if set)
ask = [{"role": "user", "content": "Say hello."}]
reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=256, messages=ask)
print(reply.content[0].text)
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=256, messages=ask) as stream:
    print("".join(stream.text_stream))
