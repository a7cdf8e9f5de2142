"""Phone numbers by Google's libphonenumber (the ``phonenumbers`` package).

The digit runs come from :mod:`convtune.pii.numbers` (written or spoken, stitched across
turns); this module says whether a run's text is a phone number anywhere a company's
callers are likely to live, and how sure that is:

* ``STRONG``: an international number (``+44 20 7946 0958``, ``+7 495 123-45-67``) that
  libphonenumber parses as valid, or a national number with a trunk prefix (``020 7946
  0958``, ``(030) 901820``, ``01 42 68 53 00``) valid in a country that dials one;
* ``WEAK``: a number written in groups (``78 651 450``, ``99 668472``, ``416 60 039``) that
  is valid in one of :data:`REGIONS`. Validity alone says little (German and Finnish
  numbering accept most 7-11 digit strings), so the grouping is required and the usual
  vetoes ("order", "flight", amounts, dates) still apply before this is asked.

Spoken runs and runs a cue already typed never get here without their context: see
``numbers.classify``. Parsing costs ~50 us per region; a run is only parsed when its shape
could be a phone number at all.
"""

from __future__ import annotations

import re
from functools import lru_cache

from convtune.pii.entities import STRONG, WEAK

# Regions tried for a number written without a country code: the national formats a
# support desk in Europe, the Americas, India, Australia or Japan hears (a judgement, not
# tuned region by region; the README's PII results measure the whole rule). Order does not matter.
REGIONS = ("US", "CA", "GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "ES", "PT", "IT", "PL", "CZ", "HU",
           "FI", "SE", "NO", "DK", "RU", "IN", "AU", "NZ", "JP", "BR", "MX", "ZA", "NG", "PH", "SG")
# Countries whose national format starts with a trunk "0" (or "8" in Russia).
TRUNK_REGIONS = ("GB", "IE", "DE", "AT", "CH", "FR", "BE", "NL", "IT", "FI", "SE", "NO", "AU", "NZ", "JP",
                 "IN", "ZA", "NG", "PH", "BR", "RU", "HU", "PL", "CZ")

# "x4587", "ext. 12", "extension 305" right after a number: part of it.
EXTENSION_RE = re.compile(r"[ \t]*(?:,[ \t]*)?(?:x|ext\.?|extension|ext\s*#)[ \t]*#?[ \t]*\d{1,6}\b",
                          re.IGNORECASE)


@lru_cache(maxsize=4096)
def _valid_in(text: str, region: str | None) -> bool:
    import phonenumbers

    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def phone_strength(text: str, digits: str, groups: tuple[int, ...], plus: bool, paren: bool,
                   spoken: bool = False) -> int:
    """``STRONG``, ``WEAK`` or 0 for a digit run read on its own (no cue). A spoken run's pauses
    are not a written grouping: it is at most ``WEAK`` and only by its trunk prefix."""
    n = len(digits)
    if n < 7 or n > 15:
        return 0
    text = digits if spoken else text.strip()
    if plus:
        return STRONG if _valid_in(text, None) else 0
    grouped = (len(groups) >= 2 or paren) and not spoken
    if len(groups) == 2 and groups[0] == 4 and digits[:2] in ("19", "20") and not paren:
        return 0  # "2024-0815", "2024-11873": a year-numbered reference, not a phone number
    if digits[0] == "0" and (grouped or n >= 10):
        if any(_valid_in(text, r) for r in TRUNK_REGIONS):
            return STRONG if grouped else WEAK
    if grouped and n <= 12 and all(g >= 2 for g in groups[1:]) and any(_valid_in(text, r) for r in REGIONS):
        return WEAK
    return 0


def extension_end(text: str, end: int) -> int:
    """End of a phone number's extension right after ``end`` in ``text`` (or ``end``)."""
    m = EXTENSION_RE.match(text, end)
    return m.end() if m else end
