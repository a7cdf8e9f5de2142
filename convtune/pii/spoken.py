"""Spoken-number normalisation with a map back to original character offsets.

Call transcripts carry numbers as words ("four one one one", "double five",
"oh" for zero, "twelve thirty four elm street"). We rewrite number words to
digits in a *normalised view* of the text and keep, for every normalised
character, the original span it came from, so that a match found in the
normalised view redacts exactly the original words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9}
# "oh"/"o" are zero only next to other numbers ("oh five"), never alone ("oh, I see").
ZERO_LETTERS = {"oh", "o"}
TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
         "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
        "seventy": 70, "eighty": 80, "ninety": 90}
REPEAT = {"double": 2, "triple": 3}
FILLERS = frozenset({"uh", "um", "umm", "uhm", "er", "erm", "ah", "hmm"})
NUMBER_WORDS = frozenset(UNITS) | ZERO_LETTERS | frozenset(TEENS) | frozenset(TENS) | {
    "hundred", "thousand"} | frozenset(REPEAT)

_TOKEN = re.compile(r"[A-Za-z]+|\d+|\S")
# What may sit between two number words of one spoken number.
_GAP_OK = re.compile(r"(?:\s|[,.\-])*")


@dataclass(frozen=True)
class Normalized:
    """Normalised text plus, per character, the original ``(start, end)`` it covers."""

    original: str
    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    from_words: tuple[bool, ...]  # True where a digit was produced from a number word

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Original offsets covering normalised ``text[start:end]`` (end exclusive)."""
        if end <= start:
            raise ValueError("empty span")
        return self.starts[start], self.ends[end - 1]


@dataclass
class _Tok:
    start: int
    end: int
    low: str
    digit_text: str | None = None  # replacement when this token is numeric
    consumed_to: int = -1  # index of last token folded into this one ("twenty" "-" "one")


def _is_gap(text: str) -> bool:
    return _GAP_OK.fullmatch(text) is not None


def normalize(text: str) -> Normalized:
    """Rewrite number words as digits; see module docstring."""
    toks = [_Tok(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text)]
    n = len(toks)

    def next_word(i: int) -> int | None:
        # Index of the next token after i when only a space or hyphen separates them.
        j = i + 1
        if j < n and toks[j].low == "-" and toks[j].start == toks[i].end:
            j += 1
        if j < n and text[toks[j - 1].end:toks[j].start].strip() == "":
            return j
        return None

    i = 0
    while i < n:
        t = toks[i]
        w = t.low
        j = next_word(i)
        nxt = toks[j].low if j is not None else None
        if w.isdigit():
            t.digit_text = t.low
        elif w in REPEAT and nxt is not None and (nxt in UNITS or nxt in ZERO_LETTERS
                                                   or (nxt.isdigit() and len(nxt) == 1)):
            d = str(UNITS.get(nxt, 0)) if not nxt.isdigit() else nxt
            t.digit_text, t.consumed_to = d * REPEAT[w], j
            # "double oh oh" is 000 in practice, but "double" only binds one digit.
            i = j + 1
            continue
        elif w in UNITS or w in TEENS:
            value = UNITS.get(w, TEENS.get(w))
            k = next_word(i)
            if k is not None and toks[k].low == "hundred":
                rest, end_idx = _tail_after_hundred(toks, next_word, k)
                t.digit_text = f"{value}{rest}" if rest else f"{value}00"
                t.consumed_to = end_idx
                i = end_idx + 1
                continue
            if k is not None and toks[k].low == "thousand" and w in UNITS:
                rest, end_idx = _tail_after_hundred(toks, next_word, k)
                t.digit_text = f"{value}{rest.zfill(3) if rest else '000'}"
                t.consumed_to = end_idx
                i = end_idx + 1
                continue
            t.digit_text = str(value)
        elif w in TENS:
            if nxt is not None and nxt in UNITS and UNITS[nxt] > 0:
                t.digit_text, t.consumed_to = str(TENS[w] + UNITS[nxt]), j
                i = j + 1
                continue
            t.digit_text = str(TENS[w])
        elif w == "plus" and nxt is not None and (nxt in UNITS or nxt.isdigit()):
            t.digit_text = "+"
        i = (t.consumed_to + 1) if t.consumed_to > i else i + 1

    _mark_interjections(text, toks)
    _resolve_zero_letters(text, toks)
    return _emit(text, toks)


def _sentence_start(text: str, pos: int) -> bool:
    before = text[max(0, pos - 40):pos].rstrip()
    return (not before and pos < 40) or before.endswith((".", "!", "?", "…", "—", "–"))


def _mark_interjections(text: str, toks: list[_Tok]) -> None:
    """"Oh, one more thing": a sentence-initial "Oh," followed by at most one
    number word is an exclamation, not a zero ("Oh, seven, eight, ..." still is)."""
    for idx, t in enumerate(toks):
        if t.low not in ZERO_LETTERS or idx + 1 >= len(toks) or toks[idx + 1].low != ",":
            continue
        if not _sentence_start(text, t.start):
            continue
        following = 0
        for u in toks[idx + 2:]:
            if u.low in {",", "-"}:
                continue
            if u.digit_text is None and u.low not in ZERO_LETTERS:
                break
            following += 1
        if following < 2:
            t.low = "oh!"  # no longer a zero letter


def _tail_after_hundred(toks, next_word, k: int) -> tuple[str, int]:
    """Two trailing digits after "hundred"/"thousand" ("... and twenty one"), if spoken."""
    j = next_word(k)
    if j is not None and toks[j].low == "and":
        j2 = next_word(j)
        if j2 is not None and (toks[j2].low in TENS or toks[j2].low in TEENS or toks[j2].low in UNITS):
            j = j2
        else:
            return "", k
    if j is None:
        return "", k
    w = toks[j].low
    if w in TEENS:
        return str(TEENS[w]), j
    if w in TENS:
        u = next_word(j)
        if u is not None and toks[u].low in UNITS and UNITS[toks[u].low] > 0:
            return str(TENS[w] + UNITS[toks[u].low]), u
        return str(TENS[w]), j
    if w in UNITS and toks[k].low == "thousand":
        return f"0{UNITS[w]}", j
    return "", k


def _resolve_zero_letters(text: str, toks: list[_Tok]) -> None:
    """Turn "oh"/"o" into 0 only inside a chain that has a definite number in it."""
    chain: list[int] = []

    def flush() -> None:
        if any(toks[c].digit_text not in (None, "+") for c in chain if toks[c].low not in ZERO_LETTERS):
            for c in chain:
                if toks[c].low in ZERO_LETTERS and toks[c].digit_text is None:
                    toks[c].digit_text = "0"
        chain.clear()

    prev_end = None
    skip_until = -1
    for idx, t in enumerate(toks):
        if idx <= skip_until:
            continue
        numeric = t.digit_text is not None or t.low in ZERO_LETTERS
        if t.low in FILLERS or t.low in {",", ".", "-"}:
            continue
        if numeric and (prev_end is None or _is_gap_or_fillers(text[prev_end:t.start])):
            chain.append(idx)
        else:
            flush()
            if numeric:
                chain.append(idx)
        if numeric:
            last = max(idx, t.consumed_to)
            prev_end = toks[last].end
            skip_until = last
        else:
            prev_end = None
    flush()


def _is_gap_or_fillers(gap: str) -> bool:
    stripped = re.sub(r"\b(?:uh|um|umm|uhm|er|erm|ah|hmm)\b", " ", gap, flags=re.IGNORECASE)
    return _is_gap(stripped)


def _emit(text: str, toks: list[_Tok]) -> Normalized:
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    words: list[bool] = []
    pos = 0
    i = 0
    n = len(toks)
    while i < n:
        t = toks[i]
        if t.digit_text is None or t.low.isdigit():
            i += 1
            continue
        last = toks[t.consumed_to] if t.consumed_to > i else t
        out.append(text[pos:t.start])  # untouched text maps 1:1
        starts.extend(range(pos, t.start))
        ends.extend(range(pos + 1, t.start + 1))
        k = len(t.digit_text)
        out.append(t.digit_text)
        starts.extend([t.start] * k)
        ends.extend([last.end] * k)
        words.extend([False] * (t.start - pos) + [True] * k)
        pos = last.end
        i = (t.consumed_to + 1) if t.consumed_to > i else i + 1
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    words.extend([False] * (len(text) - pos))
    return Normalized(text, "".join(out), tuple(starts), tuple(ends), tuple(words))
