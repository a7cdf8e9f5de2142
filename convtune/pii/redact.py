"""find_pii / redact_text / redact_conversation.

Per turn we collect candidate spans from pattern detectors (e-mail, IBAN,
dates, addresses, names) and from digit runs in the spoken-normalised text.
Across turns we then stitch digit fragments that one speaker read out in
pieces ("four one one one one one one one" / "go ahead" / "one one one ...")
and type the whole by checksum, shape and the question that preceded it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from convtune.conversation import Conversation
from convtune.pii import names, numbers, patterns
from convtune.pii.entities import (
    ACCOUNT_NUMBER,
    ADDRESS,
    CREDIT_CARD,
    CVV,
    DATE_OF_BIRTH,
    EMAIL,
    IBAN,
    PERSON,
    PHONE,
    ROUTING_NUMBER,
    SSN,
    PiiSpan,
    placeholder,
)
from convtune.pii.numbers import (
    STRONG,
    VETO,
    Run,
    classify,
    classify_in_context,
    cue_after,
    cues_in,
    nearest_cue_before,
)
from convtune.pii.spoken import Normalized, normalize

# Which type wins when candidates of equal strength overlap.
_TYPE_RANK = {EMAIL: 11, IBAN: 10, CREDIT_CARD: 9, SSN: 8, ROUTING_NUMBER: 7, PHONE: 6, DATE_OF_BIRTH: 5,
              ACCOUNT_NUMBER: 4, CVV: 3, ADDRESS: 2, PERSON: 1}
MAX_TURN_GAP = 2          # other-speaker turns allowed between two fragments of one number
MAX_ACK_WORDS = 8         # an interjection like "okay go ahead" is short
MAX_EDGE_WORDS = 3        # words allowed after a fragment / before its continuation
MAX_CHAIN = 4             # fragments stitched into one number
CONTEXT_TURNS = 2         # earlier turns searched for a cue ("what's the card number?")
_WORD = re.compile(r"[A-Za-z']+")


@dataclass
class _Cand:
    start: int
    end: int
    entity: str
    strength: int = STRONG


@dataclass
class _Turn:
    index: int
    speaker: str
    text: str
    norm: Normalized
    runs: list[Run]
    cands: list[_Cand] = field(default_factory=list)
    dates: list[tuple[int, int]] = field(default_factory=list)
    cues: list[tuple[int, int, str]] = field(default_factory=list)


def _cues_for(turns: list[_Turn], i: int, start: int, end: int) -> tuple[str | None, list[str]]:
    """The cue in the span's own turn (nearest before it, else "<x> is the <cue>"
    after it) and the cues of the latest earlier turn that has any."""
    t = turns[i]
    own = nearest_cue_before(t.cues, start)
    if own is None:
        own = cue_after(t.text, t.cues, end)
    for k in range(i - 1, max(-1, i - 1 - CONTEXT_TURNS), -1):
        if turns[k].cues:
            return own, [c for _, _, c in turns[k].cues]
    return own, []


def _cue_says(turns: list[_Turn], i: int, start: int, end: int, kind: str) -> bool:
    own, earlier = _cues_for(turns, i, start, end)
    return own == kind or (own is None and kind in earlier)


def _analyse(index: int, speaker: str, text: str) -> _Turn:
    norm = normalize(text)
    dates = patterns.find_dates(text)
    # Digits inside a calendar date ("twenty second two thousand and three")
    # are never fragments of another number.
    runs = [r for r in numbers.find_runs(norm.text, norm.from_words)
            if not any(ds < norm.ends[r.end - 1] and norm.starts[r.start] < de for ds, de in dates)]
    t = _Turn(index, speaker, text, norm, runs, dates=dates, cues=cues_in(text))
    t.cands += [_Cand(s, e, EMAIL) for s, e in patterns.find_emails(text)]
    t.cands += [_Cand(s, e, IBAN) for s, e in patterns.find_ibans(text)]
    for s, e in patterns.find_spoken_ibans(norm.text):
        s, e = norm.original_span(s, e)
        t.cands.append(_Cand(s, e, IBAN))
    for s, e in patterns.find_addresses(norm.text):
        s, e = norm.original_span(s, e)
        t.cands.append(_Cand(s, e, ADDRESS))
    t.cands += [_Cand(s, e, PERSON) for s, e in names.find_persons(text)]
    return t


def _type_context_spans(turns: list[_Turn], i: int) -> None:
    """Spans that need a cue: dates of birth and alphanumeric account ids."""
    t = turns[i]
    for s, e in t.dates:
        if _cue_says(turns, i, s, e, DATE_OF_BIRTH):
            t.cands.append(_Cand(s, e, DATE_OF_BIRTH))
    for m in patterns.ALNUM_ID_RE.finditer(t.text):
        if _cue_says(turns, i, m.start(), m.end(), ACCOUNT_NUMBER):
            t.cands.append(_Cand(m.start(), m.end(), ACCOUNT_NUMBER))


@dataclass
class _Piece:
    turn: int
    run: Run
    start: int  # original offsets
    end: int
    cue: str | None
    entity: str | None
    strength: int


def _words(s: str) -> int:
    return len(_WORD.findall(s))


def _quiet(s: str, max_words: int) -> bool:
    """No digits, no cue, and only a few words: nothing that interrupts a number."""
    return not any(c.isdigit() for c in s) and _words(s) <= max_words and not cues_in(s)


def _joinable(turns: list[_Turn], a: _Piece, b: _Piece, last_in_turn: bool, first_in_turn: bool) -> bool:
    # People read numbers out in groups; a lone digit is "one of them", "after six".
    if len(a.run.digits) < 2 or len(b.run.digits) < 2:
        return False
    if a.turn == b.turn:
        return _quiet(turns[a.turn].text[a.end:b.start], 4)
    ta, tb = turns[a.turn], turns[b.turn]
    if ta.speaker != tb.speaker or not (last_in_turn and first_in_turn):
        return False
    between = turns[a.turn + 1:b.turn]
    if len(between) > MAX_TURN_GAP or any(x.speaker == ta.speaker for x in between):
        return False
    if not all(_quiet(x.norm.text, MAX_ACK_WORDS) for x in between):
        return False
    return _quiet(ta.text[a.end:], MAX_EDGE_WORDS) and _quiet(tb.text[:b.start], MAX_EDGE_WORDS)


def _merged_run(pieces: list[_Piece]) -> Run:
    first = pieces[0].run
    return Run(first.start, pieces[-1].run.end, "".join(p.run.digits for p in pieces),
               tuple(g for p in pieces for g in p.run.groups), first.plus,
               any(p.run.paren for p in pieces), any(p.run.spoken for p in pieces))


def _number_spans(turns: list[_Turn]) -> None:
    pieces: list[_Piece] = []
    first_flags: list[bool] = []
    last_flags: list[bool] = []
    for i, t in enumerate(turns):
        for k, run in enumerate(t.runs):
            s, e = t.norm.original_span(run.start, run.end)
            own, earlier = _cues_for(turns, i, s, e)
            entity, strength = classify_in_context(run, own, earlier)
            cue = own if own is not None else next((c for c in reversed(earlier) if c not in VETO), None)
            pieces.append(_Piece(i, run, s, e, cue, entity, strength))
            first_flags.append(k == 0)
            last_flags.append(k == len(t.runs) - 1)
    i = 0
    while i < len(pieces):
        j = i
        while (j + 1 < len(pieces) and j + 1 - i < MAX_CHAIN
               and _joinable(turns, pieces[j], pieces[j + 1], last_flags[j], first_flags[j + 1])):
            j += 1
        accepted = None
        for end in range(j, i, -1):
            chain = pieces[i:end + 1]
            if all(p.strength == STRONG for p in chain):
                continue  # complete numbers in a row, not one number in pieces
            cue = next((p.cue for p in chain if p.cue is not None), None)
            entity, strength = classify(_merged_run(chain), cue)
            if entity and strength == STRONG and all(
                    p.strength < STRONG or p.entity == entity for p in chain):
                accepted = (end, entity)
                break
        if accepted:
            end, entity = accepted
            chain = pieces[i:end + 1]
            for k, p in enumerate(chain):
                # Fragments in one turn become one span, so "and"/"hang on"
                # between them goes too: "<CREDIT_CARD>" not "<...> and <...>".
                if k and chain[k - 1].turn == p.turn:
                    continue
                last = p
                for q in chain[k + 1:]:
                    if q.turn != p.turn:
                        break
                    last = q
                turns[p.turn].cands.append(_Cand(p.start, last.end, entity))
            i = end + 1
            continue
        p = pieces[i]
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        if (p.entity is None and nxt is not None and nxt.strength == STRONG and nxt.entity
                and len(p.run.digits) >= 2 and nxt.run.digits.startswith(p.run.digits)
                and _joinable(turns, p, nxt, last_flags[i], first_flags[i + 1])):
            # A false start the speaker then repeats in full ("two one nine" /
            # "sorry?" / "two one nine, oh nine, ..."): the fragment is the same number.
            turns[p.turn].cands.append(_Cand(p.start, p.end, nxt.entity))
        elif p.entity:
            turns[p.turn].cands.append(_Cand(p.start, p.end, p.entity, p.strength))
        i += 1


def _split_emails(turns: list[_Turn]) -> None:
    """"the email is jay dot park" / "okay" / "at example dot com"."""
    for i, t in enumerate(turns):
        m = patterns.LEADING_DOMAIN_RE.match(t.text)
        if not m:
            continue
        for k in range(i - 1, max(-1, i - 2 - MAX_TURN_GAP), -1):
            if turns[k].speaker != t.speaker:
                if not _quiet(turns[k].text, MAX_ACK_WORDS):
                    break
                continue
            prev = turns[k].text
            end = len(prev.rstrip(" .,!?"))
            start = patterns.spoken_local_start(prev, end)
            if start is not None:
                turns[k].cands.append(_Cand(start, end, EMAIL))
                lead = len(t.text) - len(t.text.lstrip(" .,"))
                t.cands.append(_Cand(lead, m.end(), EMAIL))
            break


def _resolve(cands: list[_Cand]) -> list[_Cand]:
    """Keep the strongest candidate where they overlap; merge same-type overlaps."""
    order = sorted(cands, key=lambda c: (-c.strength, -_TYPE_RANK[c.entity], -(c.end - c.start), c.start))
    kept: list[_Cand] = []
    for c in order:
        clash = [k for k in kept if k.start < c.end and c.start < k.end]
        if not clash:
            kept.append(_Cand(c.start, c.end, c.entity, c.strength))
        elif all(k.entity == c.entity for k in clash):
            for k in clash:
                k.start, k.end = min(k.start, c.start), max(k.end, c.end)
    kept.sort(key=lambda c: c.start)
    merged: list[_Cand] = []
    for c in kept:  # unions above can make two kept spans touch
        if merged and merged[-1].entity == c.entity and c.start < merged[-1].end:
            merged[-1].end = max(merged[-1].end, c.end)
        else:
            merged.append(c)
    return merged


def _detect(texts: list[tuple[str, str]]) -> list[list[_Cand]]:
    turns = [_analyse(i, spk, txt) for i, (spk, txt) in enumerate(texts)]
    for i in range(len(turns)):
        _type_context_spans(turns, i)
    _number_spans(turns)
    _split_emails(turns)
    return [_resolve(t.cands) for t in turns]


def find_pii(text: str) -> list[PiiSpan]:
    """PII spans in a free-standing text (no surrounding conversation)."""
    return [PiiSpan(None, c.start, c.end, c.entity, text[c.start:c.end]) for c in _detect([("", text)])[0]]


def _apply(text: str, spans: list[PiiSpan]) -> str:
    out = []
    pos = 0
    for sp in sorted(spans, key=lambda s: s.start):
        out.append(text[pos:sp.start])
        out.append(placeholder(sp.entity))
        pos = sp.end
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> tuple[str, list[PiiSpan]]:
    """Replace every PII span with its typed placeholder, e.g. ``<CREDIT_CARD>``."""
    spans = find_pii(text)
    return _apply(text, spans), spans


def _redact_labels(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)[0]
    if isinstance(value, list):
        return [_redact_labels(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_labels(v) for v in value)
    if isinstance(value, dict):
        return {k: _redact_labels(v) for k, v in value.items()}
    return value


def redact_conversation(conv: Conversation) -> tuple[Conversation, list[PiiSpan]]:
    """A copy of ``conv`` with PII in turn texts and string labels replaced.

    Turn ids, speakers, roles, times and metadata are untouched. The returned
    spans index the original turn texts (label redactions are not reported).
    """
    per_turn = _detect([(t.speaker, t.text) for t in conv.turns])
    spans: list[PiiSpan] = []
    new_turns = []
    for i, (turn, cands) in enumerate(zip(conv.turns, per_turn)):
        turn_spans = [PiiSpan(i, c.start, c.end, c.entity, turn.text[c.start:c.end]) for c in cands]
        spans += turn_spans
        new_turns.append(turn.model_copy(update={"text": _apply(turn.text, turn_spans)}) if turn_spans else turn)
    labels = _redact_labels(conv.labels)
    return conv.model_copy(update={"turns": new_turns, "labels": labels}), spans
