"""The one decode loop: every answer in the tree is decoded by :class:`DecodeLoop`.

A :class:`Seq` is one answer being decoded: its tokens, its text (incremental
detokenization, stop strings found in the new text only, text that could still become a
stop string held back), its guide (JSON mode) and why it ended. A loop holds the rows of
one :class:`~convtune.inference.batch.KVBatch` and their seqs; each :meth:`DecodeLoop.step`
masks every guided row in one pass, picks every row's token (one host sync), advances the
seqs, lets finished rows leave the batch (their KV row handed back when the seq asks for
it, so a chained task can reuse its prefix), and runs one forward for the rest.

Schedulers drive it: the server's engine adds requests between steps (continuous
batching) and ends seqs whose client left or whose deadline passed; task answering
(:mod:`convtune.evaluation.generate`) decodes a batch of rows to the end and keeps their
cache for the next task.

Task answers also end when they go round (``Sampling.stop_repeats``): a cycle of tokens
said :data:`LOOP_COPIES` times (:func:`loop_period`), a passage of :data:`REPEAT_MIN_TOKENS`
tokens said again (:func:`repeated_span`), or a finished sentence that retells an earlier
one (:func:`retold`); the repeats are trimmed, one telling kept (``finish == "repeat"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from convtune.inference.detokenize import Detokenizer
from convtune.inference.sampling import Sampler, Sampling, pick_tokens

#: A greedy loop: the last ``LOOP_COPIES * p`` generated tokens are one cycle of ``p`` tokens
#: (``LOOP_MIN_PERIOD <= p <= LOOP_MAX_PERIOD``) repeated back to back.
LOOP_MIN_PERIOD = 4
LOOP_MAX_PERIOD = 64
LOOP_COPIES = 3


def loop_period(ids: Sequence[int]) -> int:
    """The shortest cycle length ``p`` that the tail of ``ids`` repeats :data:`LOOP_COPIES`
    times back to back, or 0. Checks only the tail: integer comparisons, cheap per step."""
    n = len(ids)
    if n < LOOP_COPIES * LOOP_MIN_PERIOD:
        return 0
    last = ids[-1]
    for p in range(LOOP_MIN_PERIOD, min(LOOP_MAX_PERIOD, n // LOOP_COPIES) + 1):
        if all(ids[n - 1 - k * p] == last for k in range(1, LOOP_COPIES)):  # cheap filter first
            tail = ids[n - p:]
            if all(ids[n - (k + 1) * p:n - k * p] == tail for k in range(1, LOOP_COPIES)):
                return p
    return 0


#: A repeated passage: the last ``REPEAT_MIN_TOKENS`` generated tokens already occurred, whole
#: and not overlapping, earlier in the same answer (a summary saying a sentence again).
REPEAT_MIN_TOKENS = 24


def repeated_span(ids: Sequence[int], seen: dict[tuple[int, ...], int]) -> int:
    """Length of the passage at the tail of ``ids`` that repeats an earlier one, or 0.

    ``seen`` maps each window of :data:`REPEAT_MIN_TOKENS` tokens to where it first started;
    the caller keeps one per row and calls this after every appended token (one dict lookup),
    so the repeat is caught as soon as its first window is complete: trimming the window
    leaves the first telling.
    """
    n, w = len(ids), REPEAT_MIN_TOKENS
    if n < w:
        return 0
    start = n - w
    first = seen.setdefault(tuple(ids[start:]), start)
    return w if first + w <= start else 0  # new, or overlapping itself (a cycle: loop_period's case)


#: A retold sentence: a finished sentence of at least ``RETELL_MIN_WORDS`` words whose word
#: trigrams mostly (``RETELL_OVERLAP``) occur earlier in the same answer, small changes and all.
RETELL_MIN_WORDS = 6
RETELL_OVERLAP = 0.6
_WORD = re.compile(r"\w+")


def retold(earlier: str, sentence: str) -> bool:
    """Whether ``sentence`` mostly says again what ``earlier`` (the answer so far) said."""
    words = _WORD.findall(sentence.lower())
    if len(words) < RETELL_MIN_WORDS:
        return False
    before = _WORD.findall(earlier.lower())
    seen = {tuple(before[i:i + 3]) for i in range(len(before) - 2)}
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return sum(g in seen for g in grams) >= RETELL_OVERLAP * len(grams)


def _longest(stop: tuple[str, ...]) -> int:
    return max((len(s) for s in stop), default=0)


def _find_stop(text: str, stop: tuple[str, ...], start: int) -> int | None:
    found = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(found) if found else None


class Seq:
    """One answer being decoded.

    ``finish`` is None while it runs, then ``"stop"`` (an end-of-turn token or a stop
    string), ``"length"`` (``max_tokens``), ``"repeat"`` (went round; trimmed), or what a
    scheduler set with :meth:`end` (``"cancelled"``, ``"deadline"``). ``out`` holds the
    answer's tokens (never the end-of-turn token; ``stopped`` says whether one ended it).
    """

    def __init__(self, model: Any, sampling: Sampling, *, guide: Any = None, owner: Any = None,
                 keep_kv: bool = False, incremental: bool = True):
        """``model``: the :class:`~convtune.inference.model.Generator` decoding it.
        ``keep_kv``: hand its KV row back when it ends (task answers reuse it for the next task).
        ``incremental=False``: no text until it ends (nothing streams it, no stop strings), then
        one decode of the whole answer, instead of detokenizing every token."""
        if not incremental and sampling.stop:
            raise ValueError("stop strings need incremental text")
        self.model = model
        self.sampling = sampling
        self.sampler = Sampler(sampling)
        self.guide = guide
        self.owner = owner
        self.keep_kv = keep_kv
        self.incremental = incremental
        self.out: list[int] = []
        self.stopped = False
        self.stop_token: int | None = None
        self.finish: str | None = None
        self._detok: Detokenizer | None = None
        self._text = ""  # the answer's text so far (cut at a stop string)
        self._safe = 0  # characters of it that can no longer change (may be sent)
        self._sent = 0  # characters handed out by take_text
        self._seen: dict[tuple[int, ...], int] = {}  # repeated_span's windows
        self._sentence = 0  # where the current sentence began in ``out``
        if sampling.max_tokens <= 0:
            self.finish = "length"

    @property
    def text(self) -> str:
        """The answer's text: the whole of it once ``finish`` is set."""
        return self._text

    @property
    def token_ids(self) -> list[int]:
        """The answer's tokens with the end-of-turn token that ended it, if any."""
        return self.out + ([self.stop_token] if self.stopped and self.stop_token is not None else [])

    def end(self, reason: str) -> None:
        """End it from outside (the client left, its deadline passed); its text so far stays."""
        if self.finish is None:
            self.finish = reason

    def take_text(self) -> str:
        """Text that became final since the last call (to stream)."""
        piece = self._text[self._sent:self._safe]
        self._sent = self._safe
        return piece

    def push(self, token: int) -> None:
        """Add the token decoding picked; set ``finish`` if it ends the answer."""
        if self.finish is not None:
            return
        if self.guide is not None:
            self.guide.advance(token)
        model, s = self.model, self.sampling
        if token in model.stop_ids:
            self.stopped, self.stop_token, self.finish = True, token, "stop"
        else:
            self.out.append(token)
            if s.stop_repeats and self.guide is None and self._went_round(token):
                self.finish = "repeat"
                self._text = model.decode_text(self.out)  # trimmed: decode it whole
                self._safe = len(self._text)
                return
        if not self.incremental:
            if self.finish is None and len(self.out) >= s.max_tokens:
                self.finish = "length"
            if self.finish is not None:
                self._text = model.decode_text(self.out)
                self._safe = len(self._text)
            return
        if self._detok is None:
            self._detok = Detokenizer(model.tokenizer)
        if not self.stopped:
            self._detok.push(token)  # the new text from a short window: no re-decoding of the whole output
        text = self._detok.text
        longest = _longest(s.stop)
        cut = _find_stop(text, s.stop, max(0, self._sent - longest))
        if cut is not None:
            text, self.finish = text[:cut], "stop"
        elif self.finish is None and len(self.out) >= s.max_tokens:
            self.finish = "length"
        if self.finish is None:
            # hold back what could still become a stop string, and half-decoded characters
            safe = len(text) - max(0, longest - 1)
            while safe > self._sent and text[safe - 1] == "\ufffd":
                safe -= 1
            self._text, self._safe = text, max(safe, self._sent)
            return
        if cut is None:
            text += self._detok.flush()  # an unfinished character at the very end, as a full decode shows it
        self._text, self._safe = text, len(text)

    def _went_round(self, token: int) -> bool:
        """The repeat guards, after ``token`` was appended to ``out``; trims ``out`` when true."""
        out = self.out
        if cycle := loop_period(out):
            del out[len(out) - (LOOP_COPIES - 1) * cycle:]  # keep one copy of the cycle
            return True
        if again := repeated_span(out, self._seen):
            del out[len(out) - again:]  # the first telling stays
            return True
        if token in self.model.sentence_end_ids:
            said, now = out[:self._sentence], out[self._sentence:]
            if retold(self.model.decode_text(said), self.model.decode_text(now)):
                del out[self._sentence:]
                return True
            self._sentence = len(out)
        return False


class DecodeLoop:
    """The rows being decoded together and their seqs (see the module docstring)."""

    def __init__(self, model: Any):
        self.model = model
        self.batch: Any = None  # KVBatch of the running rows, in ``seqs`` order
        self.seqs: list[Seq] = []  # the batch's rows' seqs, then those of the rows joining
        self.logits: Any = None  # next-token logits of every running row
        self._joining: list[tuple[Any, Any]] = []  # (KVBatch, logits) added since the last step

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, batch: Any, seqs: Sequence[Seq], logits: Any) -> list[tuple[Seq, Any]]:
        """Rows whose prompts ``batch`` has prefilled (``logits``: their next-token logits) join.
        Seqs that ended already (``max_tokens`` 0) are returned at once, as :meth:`step` does.

        The rows join the running batch's cache at the next step, together with every other
        batch added before it: one copy of the cache however many requests join."""
        if len(seqs) != batch.n or logits.shape[0] != batch.n:
            raise ValueError(f"{len(seqs)} seqs and {logits.shape[0]} logits rows for {batch.n} batch rows")
        self._joining.append((batch, logits))
        self.seqs.extend(seqs)
        return self._leave() if any(s.finish is not None for s in seqs) else []

    def _merge(self) -> None:
        """The batches added since the last step join the running one (one join of them all)."""
        if not self._joining:
            return
        import torch

        parts = ([(self.batch, self.logits)] if self.batch is not None else []) + self._joining
        self._joining = []
        batches = [b for b, _ in parts]
        self.batch = batches[0] if len(batches) == 1 else type(batches[0]).join(batches)
        self.logits = torch.cat([lg for _, lg in parts]) if len(parts) > 1 else parts[0][1]

    def step(self) -> list[tuple[Seq, Any]]:
        """Decode one token for every row. Returns the seqs that ended, each with its KV row
        (a one-row KVBatch) when it asked to keep it, else None."""
        from convtune.guided import mask_rows_

        ended = self._leave()  # ended from outside since the last step (the joining rows merged)
        if not self.seqs:
            return ended
        seqs = self.seqs
        mask_rows_(self.logits, [s.guide for s in seqs])  # every JSON-mode row in one pass
        picks = pick_tokens(self.logits, [s.sampler for s in seqs], [s.out for s in seqs])
        for s, token in zip(seqs, picks):
            s.push(token)
        running_picks = [t for s, t in zip(seqs, picks) if s.finish is None]
        ended += self._leave()
        if self.seqs:
            self.logits = self.batch.step(running_picks)  # one forward for the rows still running
        return ended

    def park(self, which: Any) -> tuple[Any, list[Seq], Any] | None:
        """Take the running rows whose seq ``which(seq)`` selects out of the loop, unfinished:
        ``(their KV batch, seqs, next-token logits)``, which :meth:`add` takes back as they are
        (a scheduler sets background work aside while interactive work runs). None: no such row."""
        take = [g for g, s in enumerate(self.seqs) if s.finish is None and which(s)]
        if not take:
            return None
        self._merge()
        parked = (self.batch.select(take), [self.seqs[g] for g in take], self.logits[take])
        keep = [g for g in range(len(self.seqs)) if g not in set(take)]
        if keep:
            self.batch = self.batch.select(keep)
            self.logits = self.logits[keep]
            self.seqs = [self.seqs[g] for g in keep]
        else:
            self.batch, self.seqs, self.logits = None, [], None
        return parked

    def _leave(self) -> list[tuple[Seq, Any]]:
        """Rows whose seq ended leave the batch (their cache rows dropped, or handed back)."""
        self._merge()
        done = [g for g, s in enumerate(self.seqs) if s.finish is not None]
        if not done:
            return []
        ended = [(self.seqs[g], self.batch.select([g]) if self.seqs[g].keep_kv else None) for g in done]
        keep = [g for g, s in enumerate(self.seqs) if s.finish is None]
        if keep:
            self.batch = self.batch.select(keep)
            self.logits = self.logits[keep]
            self.seqs = [self.seqs[g] for g in keep]
        else:
            self.batch, self.seqs, self.logits = None, [], None
        return ended
