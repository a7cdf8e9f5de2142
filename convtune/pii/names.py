"""Rule-based PERSON detection: trigger phrases, titles and "First Last" with a
known first name. No model: precision comes from requiring a trigger or a
first name from ``first_names.txt`` before anything is called a name."""

from __future__ import annotations

import re
from pathlib import Path


def _load_names() -> tuple[frozenset[str], frozenset[str]]:
    common: set[str] = set()
    ambiguous: set[str] = set()
    target = common
    for line in (Path(__file__).with_name("first_names.txt")).read_text(encoding="utf-8").splitlines():
        line = line.strip().lower()
        if not line or line.startswith("#"):
            continue
        if line == "[ambiguous]":
            target = ambiguous
            continue
        target.add(line)
    return frozenset(common), frozenset(ambiguous)


FIRST_NAMES, AMBIGUOUS_NAMES = _load_names()


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words that end a name: function words, greetings, call-centre verbs. Used for
# lowercase (ASR) text where capitalisation gives no signal.
_STOP = _wordset("""
a an the and or but so if then than to of on in at for from by with about as into onto over under up down
out off is are was were be been being am i i'm im you you're he she it it's its we they me my your his her
our their this that these those here there speaking calling again too also just only really very please
thanks thank hi hello hey yes yeah no not okay ok sure sorry well um uh oh how what when where who why
which can could would should will shall may might must do does did have has had get got go going calling
call regarding about account holder department team billing support from fine good great new old one
today yesterday tomorrow now right back calling here there not mister missus miss doctor after before later
tonight soon asap anytime again anyway actually
""")
_NOT_SURNAME = _wordset("""
i the a an and or but so thanks thank hi hello hey yes no ok okay sure please sorry good great from with at
in on for to of is are was here speaking calling street st avenue ave road rd lane ln drive dr boulevard
blvd court ct way place pl terrace bank wireless energy insurance support team customer service services
airlines airline club card visa mastercard amex account inc llc corp company co group center hospital
university college school store shop mall city county beach airport station department monday tuesday
wednesday thursday friday saturday sunday january february march april may june july august september
october november december express credit debit national first
""")
# Brands that look like a title plus a name.
_BRANDS = frozenset({"mr coffee", "mr clean", "dr pepper", "dr martens", "dr scholl", "mr potato",
                     "mr peanut", "dr. pepper", "mr. coffee", "mr. clean", "dr. martens"})

_CAP = r"[A-Z](?:'[A-Z])?[a-z]+(?:[A-Z][a-z]+)?(?:-[A-Z][a-z]+)?"
_ANYWORD = r"[A-Za-z](?:'[A-Za-z])?[a-z]*(?:-[A-Za-z][a-z]+)?"
_TITLE_RE = re.compile(r"\b(?P<title>mr|mrs|ms|miss|mx|dr|mister|missus|doctor|prof|professor)\.?\s+"
                       rf"(?P<name>{_ANYWORD})(?:\s+(?P<name2>{_CAP}))?", re.IGNORECASE)
_STRONG_TRIGGER = re.compile(r"\b(?:my\s+name\s+is|my\s+name's|name's|name\s+is|names\s+is)\s+",
                             re.IGNORECASE)
_MEDIUM_TRIGGER = re.compile(
    r"\b(?:this\s+is|it's|it\s+is|its|i'm|i\s+am|im|is\s+this|am\s+i\s+speaking\s+with|speaking\s+with"
    r"|speak\s+(?:to|with)|spoke\s+(?:to|with)|talked\s+to|call\s+me|talking\s+to|ask\s+for|transfer\s+you\s+to"
    r"|on\s+behalf\s+of|hi|hello|hey|thanks|thank\s+you|bye|goodbye|dear)"
    r"(?:,?\s+(?:my|our|his|her)\s+(?:husband|wife|mother|father|mom|dad|son|daughter|sister|brother"
    r"|partner|boss|friend)\s*,?)?,?\s+",
    re.IGNORECASE)
_PAIR_TRIGGER = re.compile(r"(?:i'm|i\s+am|im|am\s+i\s+speaking\s+with|speaking\s+with|speak\s+(?:to|with)"
                           r"|spoke\s+(?:to|with)|talked\s+to|talking\s+to|ask\s+for|transfer\s+you\s+to"
                           r"|on\s+behalf\s+of|dear)\b|\w+\s*,?\s+(?:my|our|his|her)\s", re.IGNORECASE)
# "Santa Clara", "St. Louis", "Fort Myers": a first name inside a place name.
_PLACE_PREFIX = re.compile(r"(?:san|santa|saint|st\.?|fort|ft\.?|port|mount|mt\.?|lake|new|los|las|el|la|cape)\s+$",
                           re.IGNORECASE)
_WORD_AT = re.compile(rf"{_ANYWORD}")
_CAP_WORD_RE = re.compile(rf"\b{_CAP}\b")
_SPELLED_RE = re.compile(r"\b[A-Za-z](?:-[A-Za-z]){2,}\b")
_SPELL_CUE = re.compile(r"spell", re.IGNORECASE)


def _word_at(text: str, pos: int) -> re.Match[str] | None:
    return _WORD_AT.match(text, pos)


def _is_name_word(word: str, *, lowercase_ok: bool) -> bool:
    low = word.lower()
    if low in _STOP or len(low) < 2:
        return False
    return word[0].isupper() or lowercase_ok


_SPACES = re.compile(r"[ \t]+")


def _extend_surname(text: str, first: re.Match[str], lowercase_ok: bool, max_extra: int = 1) -> int:
    """End offset after up to ``max_extra`` surname words following ``first``."""
    end = first.end()
    for _ in range(max_extra):
        m = _SPACES.match(text, end)
        nxt = _word_at(text, m.end()) if m else None
        if not nxt:
            break
        w = nxt.group()
        if w.lower() in _NOT_SURNAME or w.lower() in _STOP or len(w) < 2:
            break
        if not (w[0].isupper() or (lowercase_ok and first.group()[0].islower())):
            break
        end = nxt.end()
    return end


def _capitalised_pair(text: str, first: re.Match[str]) -> bool:
    """"Dana Whitfield": two capitalised non-function words read as a full name."""
    w = first.group()
    if not w[0].isupper() or w.lower() in _STOP or w.lower() in _NOT_SURNAME:
        return False
    return _extend_surname(text, first, lowercase_ok=False) > first.end()


def find_persons(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for m in _TITLE_RE.finditer(text):
        name = m.group("name")
        key = f"{m.group('title').lower()} {name.lower()}"
        if key in _BRANDS or key.replace(".", "") in _BRANDS:
            continue
        if name.lower() in _STOP or len(name) < 2:
            continue
        if not (name[0].isupper() or m.group("title").islower()):
            continue
        end = m.end("name2") if m.group("name2") and m.group("name2").lower() not in _NOT_SURNAME else m.end("name")
        spans.append((m.start("name"), end))
    for m in _STRONG_TRIGGER.finditer(text):
        first = _word_at(text, m.end())
        if first and _is_name_word(first.group(), lowercase_ok=True):
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=True, max_extra=2)))
    for m in _MEDIUM_TRIGGER.finditer(text):
        first = _word_at(text, m.end())
        if not first:
            continue
        w = first.group()
        low = w.lower()
        if low in FIRST_NAMES:
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=True)))
        elif low in AMBIGUOUS_NAMES and w[0].isupper() and not re.match(r"\s+(?:\d|the\b)", text[first.end():]):
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=False)))
        elif _PAIR_TRIGGER.match(m.group()) and _capitalised_pair(text, first):
            # Not after "this is"/"it's": "this is Wells Fargo" is how businesses answer.
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=False)))
    for m in _CAP_WORD_RE.finditer(text):
        if m.group().lower() in FIRST_NAMES and not _PLACE_PREFIX.search(text[max(0, m.start() - 7):m.start()]):
            spans.append((m.start(), _extend_surname(text, m, lowercase_ok=False)))
    for m in _SPELLED_RE.finditer(text):
        near_name = any(0 <= m.start() - e <= 40 for _, e in spans)
        if near_name or _SPELL_CUE.search(text[max(0, m.start() - 30):m.start()]):
            spans.append((m.start(), m.end()))
    return spans
