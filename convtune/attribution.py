"""Which turns an output rests on: lexical evidence, deterministic and cheap.

Analytics products return every insight with the message ids it came from.
convtune's tasks answer in plain text/JSON, so evidence is found afterwards:
the turns sharing the most content words (lowercased, stop words and short
words dropped, numbers kept) with the output item, best first, kept in turn
order. It is a pointer for a human to check, not a proof; an item with no
content word in common with any turn gets no ids rather than a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from convtune.conversation import Conversation

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOP = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her his
i if in into is it its me my no not of on or our she so that the their them then there they this to too
up was we were will with would you your yes okay ok um uh hi hello thanks thank please just like get got
customer agent will would call""".split()
)


def content_words(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    return {w for w in words if w not in _STOP and (len(w) > 2 or w.isdigit())}


def evidence(
    text: str, conv: Conversation, *, limit: int = 3, speakers: Sequence[str] | None = None
) -> list[str]:
    """Up to ``limit`` turn ids whose content words overlap ``text`` most (in turn order)."""
    want = content_words(text)
    if not want:
        return []
    scored = []
    for i, turn in enumerate(conv.turns):
        if speakers is not None and turn.speaker not in speakers:
            continue
        shared = len(want & content_words(turn.text))
        if shared:
            scored.append((-shared, i, turn.id))
    best = sorted(scored)[:limit]
    return [tid for _, _, tid in sorted(best, key=lambda x: x[1])]


def split_sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])", text.strip())
    return [p.strip() for p in parts if p.strip()]
