"""Digit runs (written or spoken) and how context decides what they are.

A run is a maximal stretch of digits in the normalised text, allowing the
separators people and ASR put inside numbers (spaces, commas, dashes, dots,
"uh"). Checksums and shape settle many runs on their own (a Luhn-valid 16
digits is a card); the rest are typed by the nearest *cue* -- the words
before the number in the same turn, or the question asked just before
("and the security code?"). Cues such as "order number" or "flight" veto.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convtune.pii.checksums import card_number_valid, has_card_prefix
from convtune.pii.phones import phone_strength
from convtune.pii.entities import (
    ACCOUNT_NUMBER,
    CREDIT_CARD,
    CVV,
    DATE_OF_BIRTH,
    PHONE,
    ROUTING_NUMBER,
    SSN,
    STRONG,
    WEAK,
)

# Cue kinds that are not entity types.
NEG = "NEG"
EXPIRY = "EXPIRY"
EMAIL_CUE = "EMAIL"
IBAN_CUE = "IBAN"
CARD = "CARD"
AMOUNT = "AMOUNT"

# Order matters where phrases overlap: alternatives are tried left to right at
# each position, so the longer/more specific phrase must come first.
_CUE_SPECS: list[tuple[str, str]] = [
    (CVV, (r"security\s+code|cvv2?|cvc2?|card\s+verification(?:\s+(?:value|code|number))?"
          r"|(?:three|four|3|4)[\s-]digit\s+(?:security\s+)?code"
          r"|(?:(?:code|numbers?|digits)\s+)?on\s+the\s+(?:back|front)(?:\s+of\s+(?:the|my|your)\s+card)?"
          r"|back\s+of\s+(?:the|my|your)\s+card"
          r"|(?<!zip )(?<!area )(?<!promo )(?<!postal )(?<!access )\bcode")),
    (EXPIRY, (r"exp(?:\.|iry|ires|ired|iration|iring)?|valid\s+(?:thru|through|until)"
              r"|good\s+(?:thru|through)")),
    (ROUTING_NUMBER, r"routing(?:\s+(?:number|no\.?|#))?|aba|transit(?:\s+number)?"),
    (IBAN_CUE, r"iban"),
    # Not "social media", "social worker" or the card itself ("her Social Security card").
    (SSN, (r"social\s+security(?:\s+(?:number|no\.?|#))?(?!\s+card)"
           r"|social(?:'s)?(?!\s+(?:media|worker|security\s+card))|ssn|taxpayer\s+id|tax\s+id|itin")),
    (DATE_OF_BIRTH, r"date\s+of\s+birth|birth\s*date|birthday|born|dob|d\.o\.b\.?"),
    (ACCOUNT_NUMBER, (r"(?:bank\s+)?account(?:\s+(?:number|no\.?|#|num))?|acct\.?(?:\s*#)?"
                     r"|member\s+(?:id|number)|customer\s+(?:id|number)|policy\s+number|checking|savings"
                     r"|(?:driver'?s'?\s+)?licen[cs]e\s+(?:number|no\.?|#)|passport\s+(?:number|no\.?|#)"
                     r"|konto(?:nummer)?|kontonr\.?|numéro\s+de\s+compte|compte|n[úu]mero\s+de\s+cuenta|cuenta"
                     r"|conto|rekening(?:nummer)?|numer\s+konta|konta")),
    (CARD, (r"credit\s+card|debit\s+card|card(?:\s+(?:number|num|no\.?|#))?|visa|master\s?card|amex"
           r"|american\s+express|discover|diners(?:\s+club)?|jcb|union\s?pay|long\s+number")),
    (PHONE, (r"(?:tele)?phone(?:\s+number)?|cell(?:\s+phone)?"
            r"|mobile(?!\s+(?:app|application|appointment|banking|deposit|device|unit|service|wallet|home))"
            r"|landline|fax|work\s+line|home\s+line"
            r"|call(?:\s*back|\s+(?:me|you|us|him|her))(?:\s+back)?|reach\s+(?:me|you|us|him|her)"
            r"|contact\s+number|text\s+(?:me|you)|area\s+code|(?:good|best)\s+number")),
    (EMAIL_CUE, r"e-?mail"),
    # One-time and booking codes, and "ending in 4444" (a last four, not the number).
    (NEG, (r"(?:confirmation|verification|activation|access|promo|discount|coupon|gift|login|sign[\s-]in"
          r"|one[\s-]time|two[\s-](?:step|factor)|2[\s-](?:step|factor)|six[\s-]digit|6[\s-]digit|text(?:ed)?)"
          r"\s+(?:pass)?code|pass\s*code|otp|end(?:ing|s)\s+(?:in|with)|group(?:\s+(?:number|no\.?|#))?"
          r"|order|confirmation|conf\.?|tracking|flight|case\s+(?:number|no\.?|#|id)|ticket|reference|ref\.?"
          r"|invoice|model|serial|claim|booking|reservation|sku|p\.?o\.?|room|gate|seat|store|version|zip"
          r"|postal|extension|ext\.?|pin|promo|coupon|voucher|receipt|transaction|suite|apt|apartment"
          r"|dispute|part(?:\s+(?:number|no\.?|#))?|item|product|article|parcel|shipment|consignment|awb"
          r"|refund|〒"
          # order and invoice numbers in other languages
          r"|factura|fattura|facture|rechnung|faktura|fatura|bestellnummer|bestellung|auftragsnummer|pedido"
          r"|commande|zamówienie|zamówienia|ordine|bestelling|vorgangsnummer|referencia|référence|riferimento"
          r"|street|avenue|plan|press")),
    # Money said around a number ("a draft of one forty-three twenty-five"). Vetoes
    # only within its own turn: an earlier "refund" says nothing about the next answer.
    (AMOUNT, (r"(?:payment|draft|balance|charge|fee|refund|credit|total|premium|price|cost|deposit"
              r"|installment|amount|bill)s?\s+(?:of|is|was|would\s+be|will\s+be|comes\s+to)|refunded(?:\s+the)?|comes\s+to"
              r"|works\s+out\s+to")),
]
_CUE_KINDS = [k for k, _ in _CUE_SPECS]
CUE_RE = re.compile("|".join(f"(?P<c{i}>(?<![\\w-])(?:{p})(?![\\w]))" for i, (_, p) in enumerate(_CUE_SPECS)),
                    re.IGNORECASE)
# A cue stated after the number: "061000052 is the routing number".
_POST_CUE = re.compile(r"\W{0,3}(?:is|are|was|that's|as)\s+(?:the|my|our|his|her|a)\s+(?:\w+\s+){0,2}?$",
                       re.IGNORECASE)


# "the PIN on the account", "the address on your account": the account is where
# the thing lives, not what is being read out. Same for "it's on the card" /
# "let me get the card out", where the card is the object being read from.
_DET = r"(?:the|your|my|this|that|our|his|her|their)"
_ACCOUNT_AS_PLACE = re.compile(rf"\bon\s+{_DET}\s+$", re.IGNORECASE)
_CARD_AS_OBJECT = re.compile(rf"\b(?:on|off|from|get|grab|find)\s+{_DET}\s+$", re.IGNORECASE)
_CARD_OUT_AFTER = re.compile(r"\s+out\b", re.IGNORECASE)


def cues_in(text: str) -> list[tuple[int, int, str]]:
    """All cue matches in ``text`` as (start, end, kind)."""
    out = []
    for m in CUE_RE.finditer(text):
        idx = int(m.lastgroup[1:])  # type: ignore[index]
        kind = _CUE_KINDS[idx]
        word = m.group().lower()
        if kind in (ACCOUNT_NUMBER, CARD) and word in ("account", "card"):
            before = text[max(0, m.start() - 20):m.start()]
            if word == "account" and _ACCOUNT_AS_PLACE.search(before):
                continue
            if word == "card" and (_CARD_AS_OBJECT.search(before) or _CARD_OUT_AFTER.match(text, m.end())):
                continue
        out.append((m.start(), m.end(), kind))
    return out


def nearest_cue_before(cues: list[tuple[int, int, str]], pos: int, window: int = 80) -> str | None:
    """Kind of the last cue ending before ``pos`` within ``window`` characters."""
    best = None
    for s, e, kind in cues:
        if e > pos:
            break
        if s >= pos - window:
            best = kind
    return best


def cue_after(text: str, cues: list[tuple[int, int, str]], pos: int) -> str | None:
    """Cue right after a number, only in the "<number> is the <cue>" form."""
    for s, _, kind in cues:
        if s >= pos:
            if s - pos <= 45 and _POST_CUE.match(text[pos:s]):
                return kind
            return None
    return None


_SEP = r"(?:[ \t]*(?:[,.\-–]|\b(?:uh|um|umm|uhm|er|erm|ah|dash|hyphen)\b)[ \t]*)+|[ \t]+"
_UNIT = r"\(?\d+\)?\d*"
# A run may end right before a phone extension written without a space: "3560x4587".
RUN_RE = re.compile(rf"(?<![A-Za-z0-9_])(?:\+[ \t]?)?{_UNIT}(?:(?:{_SEP}){_UNIT})*(?!(?!x\d)[A-Za-z0-9_@])",
                    re.IGNORECASE)
_AMOUNT_BEFORE = re.compile(r"[$£€¥]\s*$")
_AMOUNT_AFTER = re.compile(r"\s*(?:dollars?|bucks|cents?|percent|%|pounds?|euros?|usd|k\b|grand|gigs?|gb|mb"
                           r"|megs?\b|megabits?|mbps|gigabits?|gbps|kbps|miles?\b|points\b|per\b|each\b"
                           r"|kwh\b|kw\b|mwh\b|kg\b|kilos?\b|lbs?\b|litres?\b|liters?\b|km\b|cm\b|mm\b|pcs\b"
                           r"|a\s+(?:month|year|week|day|night)\b|/\s*(?:mo|month|yr|year)\b"
                           r"|minutes?|hours?|days?|weeks?|months?|years?|times|am\b|pm\b|a\.m\.|p\.m\.|o'clock)",
                           re.IGNORECASE)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?")
_PAREN_CODE_START = re.compile(r"\(\d{1,4}\)")
_PAREN_CODE_END = re.compile(r"\(\d{1,4}\)$")
_GROUP_BREAK = re.compile(r"[,.\-–()]|dash|hyphen", re.IGNORECASE)


@dataclass(frozen=True)
class Run:
    """A digit run in normalised text (``start``/``end`` index the normalised text)."""

    start: int
    end: int
    digits: str
    groups: tuple[int, ...]
    plus: bool
    paren: bool
    spoken: bool
    text: str = ""  # the run as written (normalised text), for libphonenumber


def find_runs(norm_text: str, from_words: tuple[bool, ...]) -> list[Run]:
    runs = []
    for m in RUN_RE.finditer(norm_text):
        s, e = m.start(), m.end()
        if _AMOUNT_BEFORE.search(norm_text[max(0, s - 3):s]) or _AMOUNT_AFTER.match(norm_text, e):
            continue
        raw = m.group()
        # "(415-555-0199)": parentheses around the whole number are prose.
        # Only "(415)" / "(0)" style area and trunk codes keep their parentheses.
        if raw.endswith(")") and not _PAREN_CODE_END.search(raw):
            raw, e = raw[:-1], e - 1
        if raw.startswith("(") and not _PAREN_CODE_START.match(raw):
            raw, s = raw[1:], s + 1
        if norm_text[e:e + 1] == "/" and norm_text[e + 1:e + 2].isdigit():
            # "5352-6915-9564-1902, 11/26": the last group starts an expiry date, not this number
            cut = re.search(r"(?:[ \t]*,[ \t]*|[ \t]+)\d{1,2}$", raw)
            if cut and cut.start() > 0:
                raw, e = raw[:cut.start()], e - (len(raw) - cut.start())
        if _THOUSANDS.fullmatch(raw.strip()):
            continue  # "1,234,567.89" is an amount even without a currency sign
        digits = re.sub(r"\D", "", raw)
        groups: list[int] = []
        cur = 0
        k = 0
        while k < len(raw):
            ch = raw[k]
            if ch.isdigit():
                cur += 1
                k += 1
                continue
            j = k
            while j < len(raw) and not raw[j].isdigit():
                j += 1
            gap = raw[k:j]
            # A bare space splits groups only between written digits: spoken
            # digits are always space-separated and carry no grouping.
            written_both = not from_words[s + k - 1] and j < len(raw) and not from_words[s + j]
            if cur and (_GROUP_BREAK.search(gap) or written_both):
                groups.append(cur)
                cur = 0
            k = j
        if cur:
            groups.append(cur)
        spoken = any(from_words[s:e])
        runs.append(Run(s, e, digits, tuple(groups), raw.lstrip().startswith("+"), "(" in raw, spoken,
                        raw.strip()))
    return runs


def _nanp(d: str) -> bool:
    return len(d) == 10 and d[0] in "23456789" and d[3] in "23456789"


def _date_digits(d: str) -> bool:
    """MMDDYYYY, MMDDYY, MDDYY, YYYYMMDD and similar compact spoken dates."""
    n = len(d)
    cands = []
    if n == 8:
        cands += [(d[:2], d[2:4], d[4:]), (d[4:6], d[6:], d[:4])]
    if n in (6, 7):
        cands += [(d[:2], d[2:4], d[4:]), (d[:1], d[1:3], d[3:])]
    if n == 5:
        cands += [(d[:1], d[1:3], d[3:])]
    for mm, dd, yy in cands:
        year_ok = len(yy) == 2 or (len(yy) == 4 and 1900 <= int(yy) <= 2099)
        if 1 <= int(mm) <= 12 and 1 <= int(dd) <= 31 and year_ok:
            return True
    return False




VETO = (NEG, EXPIRY, EMAIL_CUE, AMOUNT)


def looks_like_expiry(run: Run) -> bool:
    d = run.digits
    return len(d) == 4 and 1 <= int(d[:2]) <= 12


def classify_in_context(run: Run, own_cue: str | None, earlier_cues: list[str]) -> tuple[str | None, int]:
    """Type a run from the cue in its own turn, else from an earlier turn's cues.

    An earlier question often names several things ("the date of birth on the
    account", "expiration and security code"), so every cue in it is tried,
    latest first, and a strong reading beats a weak one. Vetoes from an earlier
    turn only suppress readings that shape or checksum alone cannot support.
    """
    if own_cue is not None or not earlier_cues:
        return classify(run, own_cue)
    if EXPIRY in earlier_cues and looks_like_expiry(run):
        return None, 0
    weak: tuple[str | None, int] = (None, 0)
    for cue in reversed(earlier_cues):
        if cue in VETO:
            continue
        entity, strength = classify(run, cue)
        if strength == STRONG:
            return entity, strength
        if entity and weak[0] is None:
            weak = (entity, strength)
    if weak[0] is not None:
        return weak
    entity, strength = classify(run, None)
    if any(c in VETO for c in earlier_cues) and strength < STRONG:
        return None, 0
    return entity, strength


def classify(run: Run, cue: str | None) -> tuple[str | None, int]:
    """Type a run from its digits, shape and cue. Returns (entity or None, strength)."""
    d = run.digits
    n = len(d)
    card_ok = card_number_valid(d)
    if cue in VETO:
        # A checksum-valid card with an issuer prefix is still a card: leaking
        # one is worse than redacting an order id that happens to look like it.
        if card_ok and has_card_prefix(d) and n in (15, 16):
            return CREDIT_CARD, STRONG
        return None, 0
    if card_ok and (cue not in (ACCOUNT_NUMBER, ROUTING_NUMBER, SSN, PHONE, IBAN_CUE, DATE_OF_BIRTH)
                    or has_card_prefix(d)):
        return CREDIT_CARD, STRONG
    if cue == CVV and n in (3, 4):
        return CVV, STRONG
    if cue == SSN and (n == 9 or (n == 4 and not (run.groups == (4,) and d[:2] in ("19", "20")))):
        return SSN, STRONG  # 4: "last four of my social" (not a year said after it: "since 1998")
    if cue == ROUTING_NUMBER and n == 9:
        return ROUTING_NUMBER, STRONG
    # A shape says more than "account" said somewhere before it: a written
    # 3-2-4 number is an SSN, (206) 555-0149 / 415-555-0178 / "six oh eight,
    # five five five, oh one four seven" a phone number. (Spoken pauses are too
    # loose for the SSN shape: "X W H, four four zero, nine one, two two seven six".)
    nanp = _nanp(d) or (n == 11 and d[0] == "1" and _nanp(d[1:]))
    formatted_phone = nanp and (run.paren or run.groups in ((3, 3, 4), (1, 3, 3, 4)))
    if cue == ACCOUNT_NUMBER and run.groups == (3, 2, 4) and not run.spoken:
        return SSN, STRONG
    if cue == ACCOUNT_NUMBER and formatted_phone:
        return PHONE, STRONG
    if cue == ACCOUNT_NUMBER and 5 <= n <= 20:
        return ACCOUNT_NUMBER, STRONG
    if cue == DATE_OF_BIRTH and _date_digits(d):
        return DATE_OF_BIRTH, STRONG
    if cue == PHONE and 7 <= n <= 15:
        return PHONE, STRONG
    if cue == CARD and 6 <= n <= 19:
        return CREDIT_CARD, WEAK
    if run.plus and 8 <= n <= 15:
        return PHONE, STRONG
    if run.groups == (3, 2, 4):
        return SSN, STRONG
    if nanp:
        return PHONE, STRONG if (formatted_phone or run.spoken) else WEAK
    if n == 11 and d[0] == "0" and len(run.groups) >= 2 and d[1] in "12378":
        return PHONE, WEAK  # UK national format, e.g. 020 7946 0958 / 07700 900123
    if run.groups == (3, 4) and d[0] in "23456789":
        return PHONE, WEAK  # local number, 555-0148
    # Other countries' formats, by libphonenumber: "+36 1 234 5678", "(030) 901820", "78 651 450".
    strength = phone_strength(run.text, d, run.groups, run.plus, run.paren, run.spoken)
    if strength:
        return PHONE, strength
    if n >= 9:
        # An unexplained long number in a service call is far more often an
        # identifier than anything harmless; redacting it is the safe default.
        return ACCOUNT_NUMBER, WEAK
    return None, 0

