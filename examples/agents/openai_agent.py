"""A minimal agent on the official OpenAI SDK (docs/agents.md). Inside `corral run` it holds
only a placeholder in OPENAI_API_KEY; the proxy puts the real key on the wire."""

import openai

client = openai.OpenAI()  # reads OPENAI_API_KEY (and OPENAI_BASE_URL if set)
ask = [{"role": "user", "content": "Say hello."}]
reply = client.chat.completions.create(model="gpt-5", messages=ask)
print(reply.choices[0].message.content)
stream = client.chat.completions.create(model="gpt-5", messages=ask, stream=True)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
