"""The official `openai` client against `convtune serve` (the README's example; run after it).

CONVTUNE_API_KEY=ct-... python examples/openai_client.py
"""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("CONVTUNE_URL", "http://localhost:8000") + "/v1",
    api_key=os.environ["CONVTUNE_API_KEY"],
)

print([m.id for m in client.models.list()])

reply = client.chat.completions.create(
    model="support-v1",
    messages=[
        {"role": "user", "content": "A customer's new eSIM cannot make calls. What should the agent check?"}
    ],
    max_tokens=48,
)
print(reply.choices[0].message.content)

stream = client.chat.completions.create(
    model="support-v1",
    messages=[{"role": "user", "content": "Write a one-line apology for a late delivery."}],
    max_tokens=32,
    stream=True,
)
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()

vectors = client.embeddings.create(
    model="all-minilm-l6-v2", input=["refund for a broken blender", "roaming fee"]
)
print(len(vectors.data), "embeddings of", len(vectors.data[0].embedding), "dimensions")
