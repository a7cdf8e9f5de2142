"""find_pii / redact_text / redact_conversation.

Per turn we collect candidate spans from pattern detectors (e-mail, IBAN,
dates, addresses, names) and from digit runs in the spoken-normalised text.
Across turns we then stitch digit fragments that one speaker read out in
pieces ("four one one one one one one one" / "go ahead" / "one one one ...")
and type the whole by checksum, shape and the question that preceded it; a
number the other speaker reads back is typed like the number it repeats, and
a name found anywhere in the conversation is redacted at every mention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from convtune.conversation import Conversation
from convtune.pii import addresses, names, numbers, patterns, phones
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
    AMOUNT,
    NEG,
    STRONG,
    VETO,
    Run,
    classify,
    classify_in_context,
    cue_after,
    cues_in,
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
CUE_WINDOW = 80           # characters a cue reaches forward in its own turn
ANSWER_WORDS = 3          # words before a span that still count as the start of a turn
_WORD = re.compile(r"[A-Za-z']+")
# A question that asks for some number we have no cue for ("What's your SolPass
# number?"): the answer is about that, not about a cue said before the question.
_ASKS_FOR_NUMBER = re.compile(r"\b(?:number|id|code|no\.)(?=[^.!]*\?)", re.IGNORECASE)


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
    # original (start, end) of every number and alphanumeric id
    id_spans: list[tuple[int, int]] = field(default_factory=list)


def _own_cue(t: _Turn, start: int, end: int) -> str | None:
    """The cue nearest before ``start`` in its own turn, else "<x> is the <cue>" after it.

    A veto ("order", "a payment of") covers the next number only: once another
    number or id has been said after it, it no longer reaches ("order
    VC-3318840. number is (503) 555-0176").
    """
    best = None
    for s, e, kind in t.cues:
        if e > start:
            break
        if s >= start - CUE_WINDOW:
            best = (s, e, kind)
    if best is not None and best[2] in (NEG, AMOUNT) and any(best[1] <= a and b <= start
                                                              for a, b in t.id_spans):
        best = None
    if best is not None:
        return best[2]
    return cue_after(t.text, t.cues, end)


def _cues_for(turns: list[_Turn], i: int, start: int, end: int) -> tuple[str | None, list[str]]:
    """The cue in the span's own turn and the cues of the latest earlier turn that has any.

    An earlier turn's cues carry over to an answer (the other speaker's next
    turn) and to a read-back at the very start of a turn; not to something
    said further into one's own turn ("... a draft of one forty-three
    twenty-five" after one's own "checking account?"). A question asking for a
    number we have no cue for ends the search.
    """
    t = turns[i]
    own = _own_cue(t, start, end)
    at_start = _words(t.text[:start]) <= ANSWER_WORDS
    for k in range(i - 1, max(-1, i - 1 - CONTEXT_TURNS), -1):
        tk = turns[k]
        if tk.cues:
            if tk.speaker == t.speaker and not at_start:
                return own, []
            return own, [c for _, _, c in tk.cues if c != AMOUNT]
        if tk.speaker != t.speaker and _ASKS_FOR_NUMBER.search(tk.text):
            return own, []
    return own, []


def _cue_says(turns: list[_Turn], i: int, start: int, end: int, kind: str) -> bool:
    own, earlier = _cues_for(turns, i, start, end)
    return own == kind or (own is None and kind in earlier)


_QUANTITY_WORD = re.compile(r"\b(?:hundred|thousand)\b", re.IGNORECASE)


def _is_spoken_quantity(norm: Normalized, run: Run) -> bool:
    """"five hundred", "three hundred twelve": one spoken quantity, not digits read out."""
    raw = norm.text[run.start:run.end]
    if not run.spoken or not raw.isdigit():
        return False
    s, e = norm.original_span(run.start, run.end)
    return _QUANTITY_WORD.search(norm.original[s:e]) is not None


def _analyse(index: int, speaker: str, text: str) -> _Turn:
    norm = normalize(text)
    dates = patterns.find_dates(text)
    found = addresses.find_addresses(norm.text)
    # Digits inside a calendar date ("twenty second two thousand and three") or
    # a street address ("2207 Elm Hollow Road, unit 12") are never fragments of
    # another number; neither is a spoken quantity ("five hundred megabits").
    runs = [r for r in numbers.find_runs(norm.text, norm.from_words)
            if not any(ds < norm.ends[r.end - 1] and norm.starts[r.start] < de for ds, de in dates)
            and not any(a < r.end and r.start < b for a, b in found)
            and not _is_spoken_quantity(norm, r)]
    # Street words inside an address ("Suite 400", "Bay St") are not cues for the numbers after it.
    spans = [norm.original_span(a, b) for a, b in found]
    cues = [c for c in cues_in(text) if not any(a <= c[0] and c[1] <= b for a, b in spans)]
    t = _Turn(index, speaker, text, norm, runs, dates=dates, cues=cues)
    t.id_spans = sorted([norm.original_span(r.start, r.end) for r in runs]
                        + [m.span() for m in patterns.ALNUM_ID_RE.finditer(text)])
    t.cands += [_Cand(s, e, EMAIL) for s, e in patterns.find_emails(text)]
    t.cands += [_Cand(s, e, IBAN) for s, e in patterns.find_ibans(text)]
    for s, e in patterns.find_spoken_ibans(norm.text):
        s, e = norm.original_span(s, e)
        t.cands.append(_Cand(s, e, IBAN))
    for s, e in found:
        s, e = norm.original_span(s, e)
        t.cands.append(_Cand(s, e, ADDRESS))
    t.cands += [_Cand(s, e, PERSON) for s, e in names.find_persons(text)]
    return t


def _spelled_out(text: str, cands: list[_Cand]) -> list[_Cand]:
    """A name, street or e-mail spelled out right after it is said: "Fisk, F, I, S,
    K", "Harmon, H A R M O N", "k walsh seventy-four at example dot com. So K, W,
    A, L, S, H, seven, four". The spelling gets the type of what it spells."""
    out: list[_Cand] = []
    if not any(c.entity in (PERSON, ADDRESS, EMAIL) for c in cands):
        return out
    spelled_runs = {flag: patterns.spelled_sequences(text, digits=flag) for flag in (False, True)}
    if not spelled_runs[True]:
        return out
    for c in cands:
        if c.entity not in (PERSON, ADDRESS, EMAIL):
            continue
        for s, e, letters in spelled_runs[c.entity == EMAIL]:
            if s < c.end:
                continue
            between = text[c.end:s]
            words = [w.lower().replace("'", "") for w in _WORD.findall(between)]
            spelled = re.sub(r"[^a-z]", "", letters.lower())
            said = _letters_words(text[c.start:c.end])
            if len(words) > 1 or re.search(r"[^\w\s,.;:'’-]", between):
                break
            if words and words[0] == spelled:
                # "robert fenwick f e n w i c k": the surname said, then spelled.
                word = re.search(r"[A-Za-z']+", between)
                out.append(_Cand(c.end + word.start(), e, c.entity))  # type: ignore[union-attr]
                break
            if words and words[0] not in ("so", "thats", "its") and words[0] not in said:
                break
            if c.entity != EMAIL and spelled not in said | set(words):
                break
            out.append(_Cand(s, e, c.entity))
            break
    return out


def _letters_words(s: str) -> set[str]:
    return {re.sub(r"[^a-z]", "", w.lower()) for w in s.split()}


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


_SENTENCE_END = re.compile(r"[.!?]")
_NOT_ONE_NUMBER = re.compile(r"[/:]")  # "100/300", "2:45": two numbers side by side


def _joinable(turns: list[_Turn], a: _Piece, b: _Piece, last_in_turn: bool, first_in_turn: bool,
              echo_turns: frozenset[int] = frozenset()) -> bool:
    # People read numbers out in groups; a lone digit is "one of them", "after six".
    if len(a.run.digits) < 2 or len(b.run.digits) < 2:
        return False
    if a.turn == b.turn:
        gap = turns[a.turn].text[a.end:b.start]
        if _NOT_ONE_NUMBER.search(gap):
            return False
        # "... megabits. I'm getting forty": a new sentence with words in it is
        # a new thought, not a pause inside a number.
        if _SENTENCE_END.search(gap) and _words(gap) >= ANSWER_WORDS:
            return False
        return _quiet(gap, 4)
    ta, tb = turns[a.turn], turns[b.turn]
    if ta.speaker != tb.speaker or not (last_in_turn and first_in_turn):
        return False
    between = turns[a.turn + 1:b.turn]
    if len(between) > MAX_TURN_GAP or any(x.speaker == ta.speaker for x in between):
        return False
    if not all(x.index in echo_turns or _quiet(x.norm.text, MAX_ACK_WORDS) for x in between):
        return False
    return _quiet(ta.text[a.end:], MAX_EDGE_WORDS) and _quiet(tb.text[:b.start], MAX_EDGE_WORDS)


def _read_backs(turns: list[_Turn], pieces: list[_Piece]) -> tuple[dict[int, int], frozenset[int]]:
    """Numbers one speaker repeats right after the other said them.

    Returns {piece index: index of the piece it repeats} for turns whose digits
    are exactly the previous turn's digits (the other speaker's), and the turns
    that are nothing but such a repeat of a single fragment plus an
    acknowledgement ("Three seven eight two, go ahead."), which do not
    interrupt a number being read out in pieces. A read-back is typed like the
    number it repeats: the agent's "C R two six ... " read back by the customer
    is still a claim number, the customer's routing number read back by the
    agent still a routing number.
    """
    by_turn: dict[int, list[int]] = {}
    for k, p in enumerate(pieces):
        by_turn.setdefault(p.turn, []).append(k)
    source: dict[int, int] = {}
    quiet_turns = set()
    for ti, ks in by_turn.items():
        prev = by_turn.get(ti - 1)
        if not prev or turns[ti].speaker == turns[ti - 1].speaker:
            continue
        digits = "".join(pieces[k].run.digits for k in ks)
        if len(digits) < 2 or digits != "".join(pieces[k].run.digits for k in prev):
            continue
        if any(_own_cue(turns[ti], pieces[k].start, pieces[k].end) is not None for k in ks):
            continue  # it says itself what it is
        if len(ks) == len(prev):
            source.update(zip(ks, prev))
        else:
            source.update((k, prev[-1]) for k in ks)
        p = pieces[ks[0]]
        t = turns[ti]
        if len(ks) == 1 and _quiet(t.text[:p.start] + " " + t.text[p.end:], MAX_ACK_WORDS):
            quiet_turns.add(ti)
    return source, frozenset(quiet_turns)


def _merged_run(pieces: list[_Piece]) -> Run:
    first = pieces[0].run
    return Run(first.start, pieces[-1].run.end, "".join(p.run.digits for p in pieces),
               tuple(g for p in pieces for g in p.run.groups), first.plus,
               any(p.run.paren for p in pieces), any(p.run.spoken for p in pieces),
               " ".join(p.run.text for p in pieces))


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
    # Read-backs of a fragment by the other speaker are left out of the chain
    # (they would break it) and typed with it afterwards.
    source, echo_turns = _read_backs(turns, pieces)
    seq = [k for k in range(len(pieces)) if k not in source]
    final: dict[int, tuple[str, int]] = {}  # piece index -> (entity, strength) it was given
    index = {id(p): k for k, p in enumerate(pieces)}

    def add(p: _Piece, end: int, entity: str, strength: int = STRONG) -> None:
        final[index[id(p)]] = (entity, strength)
        start = p.start
        if entity == ACCOUNT_NUMBER:
            start = patterns.id_prefix_start(turns[p.turn].text, start)
        if entity == PHONE:
            end = phones.extension_end(turns[p.turn].text, end)
        turns[p.turn].cands.append(_Cand(start, end, entity, strength))

    x = 0
    while x < len(seq):
        y = x
        while (y + 1 < len(seq) and y + 1 - x < MAX_CHAIN
               and _joinable(turns, pieces[seq[y]], pieces[seq[y + 1]], last_flags[seq[y]],
                             first_flags[seq[y + 1]], echo_turns)):
            y += 1
        accepted = None
        for end in range(y, x, -1):
            chain = [pieces[k] for k in seq[x:end + 1]]
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
            chain = [pieces[k] for k in seq[x:end + 1]]
            for n, p in enumerate(chain):
                # Fragments in one turn become one span, so "and"/"hang on"
                # between them goes too: "<CREDIT_CARD>" not "<...> and <...>".
                if n and chain[n - 1].turn == p.turn:
                    continue
                last = p
                for q in chain[n + 1:]:
                    if q.turn != p.turn:
                        break
                    last = q
                add(p, last.end, entity)
                for q in chain[n + 1:]:
                    if q.turn != p.turn:
                        break
                    final[index[id(q)]] = (entity, STRONG)
            x = end + 1
            continue
        i = seq[x]
        p = pieces[i]
        nxt = pieces[seq[x + 1]] if x + 1 < len(seq) else None
        if (p.entity is None and nxt is not None and nxt.strength == STRONG and nxt.entity
                and len(p.run.digits) >= 2 and nxt.run.digits.startswith(p.run.digits)
                and _joinable(turns, p, nxt, last_flags[i], first_flags[seq[x + 1]], echo_turns)):
            # A false start the speaker then repeats in full ("two one nine" /
            # "sorry?" / "two one nine, oh nine, ..."): the fragment is the same number.
            add(p, p.end, nxt.entity)
        elif p.entity:
            add(p, p.end, p.entity, p.strength)
        x += 1
    for k in sorted(source):
        if source[k] in final:
            add(pieces[k], pieces[k].end, *final[source[k]])


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


def _propagate_names(turns: list[_Turn]) -> None:
    """A name found once (or a named speaker) is a name everywhere in the conversation.

    Also: the name that opens the answer to "what's your son's name?", and
    names, streets and e-mails spelled out right after they are said.
    """
    for prev, t in zip(turns, turns[1:]):
        if prev.speaker != t.speaker and names.NAME_QUESTION.search(prev.text):
            span = names.answer_name(t.text)
            if span and " " not in t.text[span[0]:span[1]].strip() and "?" not in prev.text:
                span = None  # one word answers a question only ("Yefremova"), not a remark about names
            if span:
                t.cands.append(_Cand(*span, PERSON))
    known: set[str] = set()
    for t in turns:
        known |= names.speaker_name_words(t.speaker) if t.speaker else set()
        for c in t.cands:
            if c.entity == PERSON:
                known |= names.name_words(t.text[c.start:c.end])
    for t in turns:
        t.cands += [_Cand(s, e, PERSON) for s, e in names.find_known_names(t.text, known)]
        t.cands += _spelled_out(t.text, t.cands)


def _address_answers(turns: list[_Turn]) -> None:
    """The answer to "what's the postcode?" / "and the city?" is part of an address."""
    for prev, t in zip(turns, turns[1:]):
        if prev.speaker != t.speaker and addresses.asks_for_address(prev.text) and len(t.text.split()) <= 8:
            span = addresses.answer_address(t.norm.text, prev.text)
            if span:
                s, e = t.norm.original_span(*span)
                t.cands.append(_Cand(s, e, ADDRESS))
                t.runs = [r for r in t.runs if not (span[0] < r.end and r.start < span[1])]


def _detect(texts: list[tuple[str, str]]) -> list[list[_Cand]]:
    turns = [_analyse(i, spk, txt) for i, (spk, txt) in enumerate(texts)]
    _address_answers(turns)
    _propagate_names(turns)
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
        new_turns.append(turn.model_copy(update={"text": _apply(turn.text, turn_spans)})
                         if turn_spans else turn)
    labels = _redact_labels(conv.labels)
    return conv.model_copy(update={"turns": new_turns, "labels": labels}), spans
