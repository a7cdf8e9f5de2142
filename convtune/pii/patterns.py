"""Pattern detectors that do not reduce to a digit run: e-mail (written and
spoken), IBAN, calendar dates, street addresses and alphanumeric ids."""

from __future__ import annotations

import re

from convtune.pii.checksums import IBAN_LENGTHS, iban_valid
from convtune.pii.spoken import FILLERS, NUMBER_WORDS

# ---------------------------------------------------------------- e-mail
EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    r"\.[A-Za-z]{2,24}(?![\w@])")

_TLDS = r"com|net|org|edu|gov|mil|io|co|us|uk|ca|au|de|fr|es|it|nl|info|biz|me|ai|app|dev|tv"
_DOT = r"\s*(?:\.|\bdot\b|\bperiod\b)\s*"
_ATOM = r"[a-z0-9]+(?:-[a-z0-9]+)*"
# "at example dot com" / "@ example.com" / "at corp dot example dot com"
SPOKEN_DOMAIN_RE = re.compile(
    rf"(?<![\w@])(?P<at>at|@)\s*(?P<domain>{_ATOM}(?:{_DOT}{_ATOM})*?{_DOT}(?:{_TLDS}))(?![\w@])",
    re.IGNORECASE)
def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_LOCAL_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?|[._-]|\S")
_JOINERS = {".", "_", "-", "dot", "period", "underscore", "dash", "hyphen"}
_CHAR_JOINERS = {".", "_", "-"}
_LOCAL_STOP = _wordset("""
is it's its it email e-mail mail address me to at my the a an was send yes yeah sure okay ok and or
that's thats i i'm be use using his her their our your work personal reach contact via on with from
please so well just actually new old should would as by for in this that's it’s here there
cents cent dollars dollar bucks percent euros pounds
""") | FILLERS
MAX_LOCAL_WORDS = 2  # "carl jennings sixty-six", "maggie dunleavy": first and last name at most
# "maggie dunleavy, all one word, at example dot net"
_LOCAL_ASIDE = re.compile(r"[\s,]*(?:all\s+)?(?:one\s+word|no\s+spaces?|(?:all\s+)?lower\s*case)[\s,]*$",
                          re.IGNORECASE)


def spoken_local_start(text: str, end: int) -> int | None:
    """Start of a (possibly spoken) e-mail local part ending at ``end``.

    Walks back over words joined by "dot"/"underscore"/"dash" (or the
    characters), spelled letters and number words, stopping at words that
    introduce the address ("is", "email", "it's" ...).
    """
    aside = _LOCAL_ASIDE.search(text, 0, end)
    if aside and aside.start() < end:
        end = aside.start()
    toks = list(_LOCAL_TOKEN.finditer(text, 0, end))
    start = None
    plain_words = 0
    right_kind = None  # kind of the token collected just to the right
    right_start = end
    for m in reversed(toks):
        w = m.group().lower()
        gap = text[m.end():right_start]
        if gap.strip():
            break
        if w in _CHAR_JOINERS and (gap or m.start() == 0 or text[m.start() - 1].isspace()):
            break  # "Chen. Victor": a full stop, not the dot of "jay.park"
        if w in _JOINERS:
            if right_kind in (None, "joiner"):
                break
            kind = "joiner"
        elif len(w) == 1 and w.isalpha() and right_kind in ("joiner", "letter"):
            kind = "letter"
        elif w in _LOCAL_STOP or not w[0].isalnum():
            break
        elif len(w) == 1 and w.isalpha():
            kind = "letter"
        elif w in NUMBER_WORDS or w.isdigit():
            kind = "num"
        elif right_kind == "letter":
            break  # "shows t dot nguyen": a spoken initial starts the address
        else:
            if right_kind != "joiner":
                plain_words += 1
            if plain_words > MAX_LOCAL_WORDS:
                break
            kind = "word"
        start, right_kind, right_start = m.start(), kind, m.start()
    if start is not None and right_kind == "joiner":
        return None
    return start


def find_emails(text: str) -> list[tuple[int, int]]:
    spans = [(m.start(), m.end()) for m in EMAIL_RE.finditer(text)]
    for m in SPOKEN_DOMAIN_RE.finditer(text):
        if m.group("at") == "@" and "." in m.group("domain") and " " not in m.group("domain"):
            continue  # a written address; EMAIL_RE already had it
        s = spoken_local_start(text, m.start())
        if s is not None:
            spans.append((s, m.end()))
    return spans


LEADING_DOMAIN_RE = re.compile(rf"^\W*(?:at|@)\s*{_ATOM}(?:{_DOT}{_ATOM})*?{_DOT}(?:{_TLDS})(?![\w@])",
                               re.IGNORECASE)

# ---------------------------------------------------------------- IBAN
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})(?=[ ]?[A-Za-z0-9])")


def find_ibans(text: str) -> list[tuple[int, int]]:
    out = []
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1).upper())
        if length is None:
            continue
        chars, i = 4, m.end()
        while i < len(text) and chars < length:
            ch = text[i]
            if ch.isalnum():
                chars += 1
            elif not (ch == " " and i + 1 < len(text) and text[i + 1].isalnum() and text[i - 1] != " "):
                break
            i += 1
        if chars == length and not (i < len(text) and text[i].isalnum()) and iban_valid(text[m.start():i]):
            out.append((m.start(), i))
    return out


_SPELLED_TOKEN = re.compile(r"[A-Za-z]+|\d+")


def find_spoken_ibans(norm_text: str) -> list[tuple[int, int]]:
    """IBANs read out as letters and digits ("G B eight two W E S T one two ...")
    in the normalised text: single letters and digit groups, checked by mod-97."""
    toks = [m for m in _SPELLED_TOKEN.finditer(norm_text) if m.group().isdigit() or len(m.group()) == 1]
    out: list[tuple[int, int]] = []
    i = 0
    while i + 2 < len(toks):
        a, b = toks[i], toks[i + 1]
        if not (a.group().isalpha() and b.group().isalpha() and toks[i + 2].group().isdigit()
                and norm_text[a.end():b.start()].strip(" ,") == ""):
            i += 1
            continue
        length = IBAN_LENGTHS.get((a.group() + b.group()).upper())
        chars, j, prev = "", i, None
        while j < len(toks) and length and len(chars) < length:
            if prev is not None and norm_text[prev.end():toks[j].start()].strip(" ,.") != "":
                break
            chars += toks[j].group()
            prev = toks[j]
            j += 1
        if length and len(chars) == length and iban_valid(chars):
            out.append((a.start(), prev.end()))  # type: ignore[union-attr]
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------- dates
_UNIT_W = "one|two|three|four|five|six|seven|eight|nine"
_TEEN_W = "ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen"
_TENS_W = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_ORD_UNIT = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth"
_ORD_W = (rf"(?:twenty|thirty)[\s-](?:{_ORD_UNIT})|{_ORD_UNIT}|tenth|eleventh|twelfth|thirteenth|fourteenth"
          r"|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|thirtieth")
_DAY = rf"(?:[0-3]?\d(?:st|nd|rd|th)?|{_ORD_W}|(?:twenty|thirty)[\s-](?:{_UNIT_W})|{_TEEN_W}|{_UNIT_W})"
_MONTH = (r"(?:january|february|march|april|may|june|july|august|september|october|november|december"
          r"|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?")
_SPOKEN_YEAR = (rf"(?:nineteen|twenty)[\s-](?:(?:oh|o|zero)[\s-](?:{_UNIT_W})|{_TEEN_W}"
                rf"|(?:{_TENS_W})(?:[\s-](?:{_UNIT_W}))?|hundred)"
                rf"|two\s+thousand(?:\s+and)?(?:[\s-](?:{_TEEN_W}|(?:{_TENS_W})(?:[\s-](?:{_UNIT_W}))?|{_UNIT_W}))?")
_YEAR = rf"(?:(?:19|20)\d\d|'\d\d|{_SPOKEN_YEAR}|(?:{_TENS_W})[\s-](?:{_UNIT_W})|(?:{_TENS_W}))"
# "march third ninety one, uh, nineteen ninety one": the year said again in full.
_RESTATED_YEAR = rf"(?:[\s,]+(?:(?:uh|um|i\s+mean)[\s,]+)?(?:{_SPOKEN_YEAR}|(?:19|20)\d\d)(?![\w/]))?"
_MONTHS_INTL = (r"januar|februar|märz|maerz|mai|juni|juli|oktober|dezember|janvier|février|fevrier|mars|avril"
                r"|juin|juillet|août|aout|septembre|octobre|novembre|décembre|decembre|enero|febrero|marzo|abril|mayo"
                r"|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre|gennaio|febbraio|aprile"
                r"|maggio|giugno|luglio|settembre|ottobre|dicembre|janeiro|fevereiro|março|maio|junho|julho"
                r"|setembro|outubro|dezembro|januari|februari|maart|mei|augustus|stycznia|lutego|marca|kwietnia"
                r"|maja|czerwca|lipca|sierpnia|września|października|listopada|grudnia")
DATE_RE = re.compile(
    rf"(?<![\w/.-])(?:"
    rf"{_MONTH}\s+(?:the\s+)?{_DAY}(?:\s*,?\s*(?:of\s+)?{_YEAR}{_RESTATED_YEAR})?"
    rf"|(?:the\s+)?{_DAY}\s+(?:of\s+)?{_MONTH}(?:\s*,?\s*{_YEAR}{_RESTATED_YEAR})?"
    rf"|[01]?\d[/.-][0-3]?\d[/.-](?:\d{{4}}|\d{{2}})"
    rf"|[0-3]?\d[/.-][01]?\d[/.-](?:19|20)\d\d"   # day first: 17/06/1969, 22.05.1991
    rf"|[0-3]?\d\.?\s+(?:{_MONTHS_INTL})\.?\s+(?:de\s+)?(?:19|20)\d\d"  # 14. Juli 1988, 3 de marzo de 1975
    rf"|[0-3]?\d\s+de\s+(?:{_MONTHS_INTL})\s+de\s+(?:19|20)\d\d"
    rf"|(?:19|20)\d\d-[01]\d-[0-3]\d"
    rf")(?![\w/])",
    re.IGNORECASE)


def find_dates(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in DATE_RE.finditer(text)]


# ---------------------------------------------------------------- spelled letters
_SPELL_TOK = re.compile(r"[A-Za-z]+|\d")
_SPELL_GAP = re.compile(r"[ \t]*(?:,[ \t]*|-|\.[ \t]*)?[ \t]*")
_DIGIT_VALUES = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9"}
MIN_SPELLED = 3


def spelled_sequences(text: str, *, digits: bool = False) -> list[tuple[int, int, str]]:
    """Runs of single letters said one by one ("F, I, S, K", "H A R M O N",
    "W-A-L-S-H"), optionally with digits ("K, W, A, L, S, H, seven, four").
    Returns (start, end, the letters and digits joined)."""
    out: list[tuple[int, int, str]] = []
    cur: list[tuple[int, int, str]] = []

    def flush() -> None:
        if sum(1 for _, _, c in cur if c.isalpha()) >= MIN_SPELLED:
            out.append((cur[0][0], cur[-1][1], "".join(c for _, _, c in cur)))
        cur.clear()

    for m in _SPELL_TOK.finditer(text):
        w = m.group()
        if len(w) == 1 and w.isalpha():
            ch = w
        elif digits and (w.isdigit() or w.lower() in _DIGIT_VALUES):
            ch = w if w.isdigit() else _DIGIT_VALUES[w.lower()]
        else:
            flush()
            continue
        if cur and not _SPELL_GAP.fullmatch(text[cur[-1][1]:m.start()]):
            flush()
        cur.append((m.start(), m.end(), ch))
    flush()
    return out


# Spelled letters in front of a number are part of the id: "policy B W A nine
# one one four two six", "X W H, four four zero ...", "C A dash seven seven ...".
_PREFIX_PART = re.compile(r"(?:(?<![\w'])(?P<letter>[A-Za-z])"
                          r"|(?<![\w'])(?P<caps>[A-Z]{2,4}|[A-Z]{1,4}\d{1,6})"
                          r"|\b(?P<dash>dash)|(?P<hyphen>-))[ \t]*,?[ \t]*$")
_NOT_A_PREFIX = frozenset({"ID", "PIN", "SSN", "DOB", "ABA", "IBAN", "CVV", "EXP", "NO", "OK", "IS", "MY",
                           "IT"})


def id_prefix_start(text: str, start: int) -> int:
    """Start of an id that begins with spelled letters before the digits at ``start``."""
    pos, letters, caps = start, 0, 0
    new_start = start
    while pos > 0:
        m = _PREFIX_PART.search(text, 0, pos)
        if not m:
            break
        if m.group("letter"):
            letters += 1
        elif m.group("caps"):
            if caps or m.group("caps") in _NOT_A_PREFIX:
                break
            caps += 1
        pos = m.start()
        if m.group("letter") or m.group("caps"):
            new_start = pos
    if letters >= 2 or caps:
        return new_start
    return start


# ---------------------------------------------------------------- ids
# Alphanumeric identifiers ("XJH448120931", "CA-448-2210"); typed only by context.
# Not ordinals: "26th-28th" is a date range.
ALNUM_ID_RE = re.compile(r"(?<![\w-])(?=[A-Za-z0-9-]{6,}(?![\w-]))(?=(?:[A-Za-z-]*\d){4})(?=[^\s]*[A-Za-z])"
                         r"(?!\d+(?:st|nd|rd|th)(?:-\d+(?:st|nd|rd|th))*(?![\w-]))"
                         r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?![\w-])")
