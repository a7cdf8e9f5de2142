"""Independent leak check of the PII redactor on the hand-written sample calls.

``examples/data/{train,test}.jsonl`` were written by other people and use only a
known list of fake values (test card numbers, two test SSNs, 555-01xx phone
numbers, ``@example.*`` e-mail addresses, two test IBANs and one routing
number). After redaction none of those values may survive in any form: written,
spoken ("oh seven eight"), or read out in pieces over several turns.

The check deliberately does NOT use the redactor's own normaliser: it has its
own small number-word reader, so a blind spot in ``convtune.pii.spoken`` cannot
hide a leak. For every speaker, all of that speaker's redacted turns are joined,
number words are turned into digits and everything that is not a digit is
dropped, and the known values are searched in that digit stream. The same is
done on the original turns to find where each value was said, and every digit
of it must lie inside a redacted span (so a card read out over three turns
with one turn missed counts, although the full number is no longer readable).

Measured when this check was written (before the sample-data fixes): 3 values
leaked in 2 conversations -- an Amex read out over three turns with the agent
echoing the first group (9 of 15 digits left), "maggie dunleavy, all one word,
at example dot net", and "(503) 555-0176" after "order VC-3318840." in the same
turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from convtune.conversation import Conversation
from convtune.pii import PiiSpan, redact_conversation

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
SAMPLE_FILES = ("train.jsonl", "test.jsonl")

CARDS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "4012888888881881")
SSNS = ("078051120", "219099999")
IBANS = ("GB82WEST12345698765432", "DE89370400440532013000")
ROUTING = ("021000021",)
DIGIT_VALUES = CARDS + SSNS + ROUTING
# 555-01xx, the range reserved for fiction; seven digits are enough to be a leak.
PHONE_RE = re.compile(r"55501\d\d")

_UNITS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
          "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_TEENS = {"ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
          "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19"}
_TENS = {"twenty": "2", "thirty": "3", "forty": "4", "fifty": "5", "sixty": "6", "seventy": "7",
         "eighty": "8", "ninety": "9"}
_REPEAT = {"double": 2, "triple": 3}
_NUMERIC = set(_UNITS) | set(_TEENS) | set(_TENS) | set(_REPEAT) | {"hundred"}
_TOKEN = re.compile(r"<[A-Z_]+>|[A-Za-z]+|\d")


def digit_tokens(text: str) -> list[tuple[str, int, int]]:
    """Every digit said or written in ``text`` as ``(digits, start, end)``, in order.

    "oh" counts as zero only next to another number word or digit (so "Oh, I
    see" adds nothing); "twenty-eight" is 28, "twenty" alone 20, "double five" 55.
    Placeholders such as ``<PHONE>`` and all other words are separators.
    """
    toks = [(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)
            if not m.group().startswith("<")]

    def numeric(k: int) -> bool:
        if not 0 <= k < len(toks):
            return False
        w = toks[k][0]
        return w.isdigit() or (w in _NUMERIC and w not in ("oh", "o"))

    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(toks):
        w, s, e = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", e, e)
        if w.isdigit():
            out.append((w, s, e))
        elif w in ("oh", "o"):
            a = b = i  # the run of "oh"s this one belongs to must touch a number
            while a > 0 and toks[a - 1][0] in ("oh", "o"):
                a -= 1
            while b + 1 < len(toks) and toks[b + 1][0] in ("oh", "o"):
                b += 1
            if numeric(a - 1) or numeric(b + 1):
                out.append(("0", s, e))
        elif w in _UNITS:
            out.append((_UNITS[w], s, e))
        elif w in _TEENS:
            out.append((_TEENS[w], s, e))
        elif w in _TENS:
            if nxt[0] in _UNITS and nxt[0] not in ("zero", "oh", "o"):
                out.append((_TENS[w] + _UNITS[nxt[0]], s, nxt[2]))
                i += 1
            else:
                out.append((_TENS[w] + "0", s, e))
        elif w in _REPEAT and nxt[0] in _UNITS:
            out.append((_UNITS[nxt[0]] * _REPEAT[w], s, nxt[2]))
            i += 1
        elif w == "hundred" and not numeric(i + 1):
            out.append(("00", s, e))
        i += 1
    return out


def spoken_digits(text: str) -> str:
    """The digits of ``text`` (written or spoken) with every separator dropped."""
    return "".join(d for d, _, _ in digit_tokens(text))


_SPOKEN_EXAMPLE = re.compile(r"(?:\bat\b|@)\s*example\b"
                             r"|\bexample\s*(?:\.|\bdot\b|\bperiod\b)\s*(?:com|org|net)\b", re.IGNORECASE)
# The last word of a spoken local part sits right before "at example".
_LOCAL_END = re.compile(r"([A-Za-z0-9]+)[\s,]*(?:\bat\b|@)\s*example\s*(?:\.|\bdot\b)", re.IGNORECASE)
# Joiners can only be part of a spoken local part when they touch the address.
_LOCAL_TAIL = re.compile(r"(?:\b(?:dot|underscore|dash|hyphen)\s*|\w[._-])<EMAIL>", re.IGNORECASE)


def _load() -> list[Conversation]:
    convs = []
    for name in SAMPLE_FILES:
        with open(DATA / name, encoding="utf-8") as f:
            convs += [Conversation.model_validate_json(line) for line in f if line.strip()]
    return convs


def _value_occurrences(stream: str) -> list[tuple[int, int, str]]:
    """``(start, end, value)`` of known values in a digit stream."""
    occ = []
    for value in DIGIT_VALUES:
        occ += [(m.start(), m.start() + len(value), value) for m in re.finditer(f"(?={value})", stream)]
    occ += [(m.start(), m.end(), m.group()) for m in PHONE_RE.finditer(stream)]
    return occ


_AREA_GAP = re.compile(r"[\s().,-]*")


def _with_area_code(turns, toks, left: list[int]) -> list[int]:
    """Add the (up to three) digits said just before a 555-01xx number in the same turn."""
    k, need = left[0], 3
    while k > 0 and need > 0:
        d, i, s, _ = toks[k - 1]
        _, i2, s2, _ = toks[k]
        if i != i2 or not _AREA_GAP.fullmatch(turns[i].text[toks[k - 1][3]:s2]) or len(d) > need:
            break
        need -= len(d)
        k -= 1
        left = [k, *left]
    return left


Redactor = Callable[[Conversation], tuple[Conversation, list[PiiSpan]]]


def find_leaks(convs: list[Conversation],
               redact: Redactor = redact_conversation) -> list[tuple[str, str, str]]:
    """``(conversation id, speaker, what survived)`` for every leak.

    Two views, both per speaker over the whole conversation:

    * the redacted text: no known value may be readable in it;
    * the original text: wherever a known value was said or written (possibly
      in pieces across turns), every one of its digits must have been redacted,
      so a card read out in three turns with one turn missed is a leak even
      though the full number is no longer readable.
    """
    leaks: list[tuple[str, str, str]] = []
    for conv in convs:
        red, spans = redact(conv)
        covered: dict[int, list[tuple[int, int]]] = {}
        for sp in spans:
            covered.setdefault(sp.turn_index, []).append((sp.start, sp.end))
        for speaker in sorted({t.speaker for t in conv.turns}):
            idx = [i for i, t in enumerate(conv.turns) if t.speaker == speaker]
            found = _redacted_view(red, idx) + _original_view(conv, idx, covered)
            leaks += [(conv.id, speaker, what) for what in found]
    return leaks


def _redacted_view(red: Conversation, idx: list[int]) -> list[str]:
    """Known values still readable in one speaker's redacted turns."""
    joined = "\n".join(red.turns[i].text for i in idx)
    found = [v for _, _, v in _value_occurrences(spoken_digits(joined))]
    compact = re.sub(r"[^A-Z0-9]", "", joined.upper())
    found += [v for v in IBANS if v in compact]
    for i in idx:
        found += [m.group() for m in _SPOKEN_EXAMPLE.finditer(red.turns[i].text)]
        found += [m.group() for m in _LOCAL_TAIL.finditer(red.turns[i].text)]
    return found


def _original_view(conv: Conversation, idx: list[int],
                   covered: dict[int, list[tuple[int, int]]]) -> list[str]:
    """Digits of known values (and e-mail local parts) one speaker said that were not redacted."""

    def redacted(ti: int, s: int, e: int) -> bool:
        return any(a <= s and e <= b for a, b in covered.get(ti, []))

    toks = [(d, i, s, e) for i in idx for d, s, e in digit_tokens(conv.turns[i].text)]
    owner: list[int] = []  # digit position in the stream -> token index
    for k, (d, *_rest) in enumerate(toks):
        owner += [k] * len(d)
    found = []
    for a, b, v in _value_occurrences("".join(t[0] for t in toks)):
        said = sorted({owner[p] for p in range(a, b)})
        if PHONE_RE.fullmatch(v):
            said = _with_area_code(conv.turns, toks, said)
        survivors = [toks[k] for k in said if not redacted(*toks[k][1:])]
        if survivors:
            shown = " / ".join(conv.turns[i].text[s:e] for _, i, s, e in survivors)
            found.append(f"{v}: unredacted part(s) {shown!r}")
    for i in idx:
        for m in _LOCAL_END.finditer(conv.turns[i].text):
            if not redacted(i, m.start(1), m.end(1)):
                found.append(f"e-mail local part {m.group(1)!r}")
    return found


def test_spoken_digits_reader():
    assert spoken_digits("Oh seven eight...") == "078"
    assert spoken_digits("...oh five, eleven twenty.") == "051120"
    assert spoken_digits("Oh, I see. It's two one oh, five five five, oh one one nine") == "2105550119"
    assert spoken_digits("double five, twenty-eight, 4111 <CREDIT_CARD> 12") == "5528411112"
    assert spoken_digits("carl jennings sixty-six at example") == "66"
    assert spoken_digits("Routing is oh two one, oh oh oh, oh two one.") == "021000021"


@pytest.fixture(scope="module")
def sample_convs() -> list[Conversation]:
    convs = _load()
    assert len(convs) >= 100
    return convs


def test_sample_data_uses_the_known_values(sample_convs):
    # The check is only meaningful if the raw data does contain the values.
    raw = {c.id: "\n".join(t.text for t in c.turns) for c in sample_convs}
    streams = "|".join(spoken_digits(x) for x in raw.values())
    for value in CARDS[:4] + SSNS + ROUTING:
        assert value in streams, value
    assert PHONE_RE.search(streams)
    assert sum(1 for x in raw.values() if _SPOKEN_EXAMPLE.search(x)) >= 15


def test_no_known_value_survives_redaction(sample_convs):
    leaks = find_leaks(sample_convs)
    assert leaks == [], "\n".join(f"{cid} [{spk}]: {v}" for cid, spk, v in leaks)


def test_leak_check_sees_leaks(sample_convs):
    # The check itself must be sensitive: with no redaction everything leaks,
    # and redacting only one of the turns a number was read out in still leaks.
    unredacted = find_leaks(sample_convs, redact=lambda c: (c, []))
    assert len(unredacted) >= 60
    assert {v for _, _, v in unredacted} >= {"4111111111111111", "078051120", "021000021", "at example"}

    def miss_first_card_turn(c: Conversation) -> tuple[Conversation, list[PiiSpan]]:
        red, spans = redact_conversation(c)
        first = next(sp.turn_index for sp in spans if sp.entity == "CREDIT_CARD")
        turns = [c.turns[i] if i == first else t for i, t in enumerate(red.turns)]
        return red.model_copy(update={"turns": turns}), [sp for sp in spans if sp.turn_index != first]

    c = next(c for c in sample_convs if c.id == "banking-001")  # a card read out over two turns
    partial = find_leaks([c], redact=miss_first_card_turn)
    assert any(v.startswith("4111111111111111: unredacted part(s)") for _, _, v in partial), partial
