"""Check-digit validators. They are what lets us tell a card number from an
order id of the same length without any context."""

from __future__ import annotations


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check used by payment card numbers."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Typical issuer prefixes; used only to let a checksum-valid card number win
# over a contradicting spoken cue ("order number ...").
_CARD_PREFIXES = ("4", "51", "52", "53", "54", "55", "22", "23", "24", "25", "26", "27",
                  "34", "37", "6011", "65", "62", "35", "30", "36", "38")


def card_number_valid(digits: str) -> bool:
    """13-19 digits, Luhn-valid."""
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def has_card_prefix(digits: str) -> bool:
    return digits.startswith(_CARD_PREFIXES)


# ISO 13616 lengths per country; a wrong length is rejected before mod-97.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_valid(iban: str) -> bool:
    """ISO 13616 IBAN: known country length and mod-97 == 1. Spaces ignored."""
    s = "".join(iban.split()).upper()
    if len(s) < 15 or not s.isalnum() or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    if IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    try:
        num = "".join(str(int(ch, 36)) for ch in rearranged)
    except ValueError:
        return False
    return int(num) % 97 == 1


def aba_valid(digits: str) -> bool:
    """US ABA routing number: 9 digits, weights 3-7-1, valid Federal Reserve prefix."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    prefix = int(digits[:2])
    if not (prefix <= 12 or 21 <= prefix <= 32 or 61 <= prefix <= 72 or prefix == 80):
        return False
    d = [int(c) for c in digits]
    total = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])
    return total % 10 == 0
