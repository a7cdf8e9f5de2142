"""Street addresses in many countries' formats, found as a chain of address parts.

An address is found from an *anchor* and grown to its whole extent:

* anchors: a street with its house number in any of the usual orders (``27 Queen's Road``,
  ``12 rue de la Paix``, ``Calle Mayor 15``, ``ul. Marszałkowska 84/92``, ``Hauptstraße 5``,
  ``Koskikatu 25``, ``1-4-2 Minami-Aoyama``, ``27 Teheran-ro 10-gil``), a post-office box
  (``P.O. Box 30126``, ``RR 2 Box 147``, ``Postfach 1234``), or a street without a number
  (``Church Lane``, ``MG Road``) which counts only if the parts around it include a
  postcode, a unit or a building;
* parts joined after it, each separated by a comma, a line break, a slash or a space:
  units and floors (``Apt. 864``, ``Suite 400``, ``3º B``, ``piso 5``, ``12/F``), postcodes
  of many shapes (``M5R 2A5``, ``M1 2AB``, ``10115``, ``1100-053``, ``C1043AAZ``), places
  (one to three capitalised words, with ``de``/``am``/``upon``-style connectors), state and
  province codes; in lowercase (ASR) text, up to two words that are not common English;
* parts joined before it: units and buildings (``Flat 3``, ``Shanti Apartments``, ``House
  No. 12``, ``Rose Cottage``).

Input is the spoken-normalised text (house numbers said as words arrive as digits).
Digits inside an address are never read as another number (``redact._analyse``).
"""

from __future__ import annotations

import regex as re

_U, _L = r"\p{Lu}", r"\p{Ll}"
# A capitalised word: "Manchester", "São", "Kadıköy/İstanbul", "Queen's", "Saint-Denis", "McAllister".
_CAPW = rf"{_U}[\p{{L}}'’]*(?:[-/]{_U}?[\p{{L}}'’]+)*\.?"
_ANYW = r"[\p{L}][\p{L}'’]*(?:-[\p{L}]+)*"
# A place word: "Manchester", "Kadıköy/İstanbul", "Saint-Denis" (two letters at least, no digits after).
_PLACEW = rf"{_U}[\p{{L}}'’]+(?:[-/]{_U}?[\p{{L}}'’]+)*(?![\p{{L}}\d])"
_CONNECT = (r"(?i:de|del|de\s+la|de\s+los|de\s+las|da|do|dos|das|di|della|delle|dei|du|des|de\s+l'|d'|la|le"
            r"|les|am|an|auf|im|in|der|den|op|aan|van|von|sur|sous|upon|on|under|the|y|e|i)")
_ENG_SUFFIX = (r"street|st|avenue|ave|av|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|way"
               r"|terrace|ter|circle|cir|parkway|pkwy|highway|hwy|trail|trl|square|sq|loop|row|alley|crescent|cres"
               r"|close|plaza|pike|run|path|walk|ridge|heights|hts|grove|gardens|gdns|mews|hill|park|green"
               r"|parade|esplanade|quay|wharf|gate|rise|view|vale|broadway|marg|nagar|salai")
_DIR = r"(?i:north|south|east|west|n|s|e|w|ne|nw|se|sw)\.?"
# Street types written before the name: "rue de la Paix", "Calle Mayor", "ul. Marszałkowska".
_PREFIX_TYPE = (r"rue|avenue|av\.|avda\.?|bd|boulevard|blvd|chemin|allée|impasse|quai|route|cours|place"
                r"|passage|calle|c/|carrer|avenida|paseo|plaza|camino|carretera|ronda|travesía|rua|travessa|largo"
                r"|estrada|alameda|praça|via|viale|piazza|corso|vicolo|strada|ul\.|ulica|al\.|aleja|os\.|pl\."
                r"|jalan|jl\.|soi|thanon|rruga|ulitsa|prospekt|str\.|sokak|sok\.|cadde(?:si)?|cd\.|heol|ffordd"
                r"|vul\.|vulytsia")
# Street words that end a compound name: "Hauptstraße", "Koskikatu", "Keizersgracht", "Laugavegur".
_COMPOUND = (r"straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|graben|steig|chaussee|laan|straat"
             r"|gracht|plein|kade|singel|dijk|katu|tie|kuja|polku|väylä|vägen|gatan|gränd|väg|veien|gata"
             r"|gate|vej|gade|vegur|utca|út|tér|körút|ulice|náměstí|třída|nábřeží|ova|cesta|caddesi"
             r"|sokak|sokağı|bulvarı|-ro|-gil|-dong|-daero")
# "27", "221B", "84/92", "2-1-33"; spoken "sixteen oh two" arrives as "16 0 2".
_HOUSE = (r"(?:\d{1,5}(?:[A-Za-z]|bis|ter|-[A-Z]\b|\s+huis\b)?(?:[-/]\d{1,5}[A-Za-z]?){0,2}"
          r"|\d{1,2}(?: \d{1,2}){1,2}(?![ ]\d)|\d(?: \d){1,4})")
_NAME = rf"(?:{_ANYW}|\d+(?:st|nd|rd|th))"
_STOP_WORD = (r"the|a|an|to|of|on|in|at|for|from|by|and|or|but|my|your|our|his|her|their|this|that|is|are|was"
              r"|were|be|it|its|i|we|you|they|he|she|minutes?|hours?|days?|weeks?|months?|years?|times?"
              r"|dollars?|euros?|pounds?|items?|units?|people|miles?|km|blocks?|more|less|other|same|new|old"
              r"|just|only|per|each|every|all|some|any|one|with|am|pm|seats?|nights?|points|percent|orders?"
              r"|boxes|packages?|pieces?|copies|tickets?|pages?|floors|rooms|stars")
_NAMEW = rf"(?!(?i:{_STOP_WORD})\b){_NAME}"

_STREET_NUM_FIRST = (rf"(?<![\w.,:$£€/-]){_HOUSE},?\s+(?:{_DIR}\s+)?{_NAMEW}(?:\s+{_NAMEW}){{0,3}}"
                     rf"\s+(?i:{_ENG_SUFFIX})\b\.?(?:\s+(?i:ne|nw|se|sw|n|s|e|w)\b\.?)?")
_STREET_FRENCH = (rf"(?<![\w.,:$£€/-]){_HOUSE}(?:\s*(?i:bis|ter))?,?\s+(?i:{_PREFIX_TYPE})\s+"
                  rf"(?:(?:{_CONNECT})\s+)?{_ANYW}(?:\s+(?:(?:{_CONNECT})\s+)?{_CAPW}){{0,3}}")
_STREET_TYPE_FIRST = (rf"(?<![\w-])(?i:{_PREFIX_TYPE})\s*(?:(?:{_CONNECT})\s+)?{_CAPW}"
                      rf"(?:\s+(?:(?:{_CONNECT})\s+)?(?:{_CAPW}|\d+/\d+|[A-Z]{{1,3}}\s?\d+/\d+)){{0,3}},?\s+"
                      rf"(?i:no\.?\s*:?\s*)?{_HOUSE}\b")
_STREET_COMPOUND = (rf"(?<![\w-])(?:(?:Am|An|Auf|Im|In|Der|De|Het)\s+)?{_U}[\p{{L}}'’-]*(?i:{_COMPOUND})"
                    rf"(?:\s+(?i:no\.?\s*:?\s*)?{_HOUSE}\b)")
_STREET_COMPOUND_SEP = (rf"(?<![\w-]){_CAPW}(?:\s+{_CAPW})?\s+(?i:iela|pr\.|prospektas|gatvė|g\.|tänav|mnt\.?"
                        rf"|út|utca|straße|strasse|weg|gasse|platz|allee|laan"
                        rf"|straat|caddesi|sokak|sokağı)\s+(?i:no\.?\s*:?\s*)?{_HOUSE}\b")
_STREET_ASIAN = (rf"(?<![\w.,:$£€/-])\d{{1,4}}(?:-\d{{1,4}}){{1,2}}[ \t]+{_CAPW}(?:-{_CAPW})?"
                 rf"|(?<![\w.,:$£€/-])\d{{1,4}}\s+{_CAPW}-(?:ro|gil|daero|dong)\b(?:\s+\d{{1,4}}-(?:gil|ro)\b)?")
_PO_BOX = (r"(?<![\w.])(?i:p\.?\s?o\.?\s*box|post\s+office\s+box|postfach|apartado(?:\s+de\s+correos)?"
           r"|casilla|boîte\s+postale|bp|caixa\s+postal|private\s+bag|locked\s+bag|gpo\s+box|rr\s+\d+\s+box)"
           r"\s*\d{1,6}(?:[- ]\d{1,6}){0,5}\b")
_STREET_NO_NUM = (rf"(?<![\w-])(?!(?i:{_STOP_WORD})\b){_CAPW}(?:\s+(?!(?i:{_STOP_WORD})\b){_CAPW}){{0,2}}\s+"
                  rf"(?i:street|st|road|rd|lane|ln|avenue|ave|drive|dr|close|crescent|way|terrace|place|grove"
                  rf"|gardens|square|marg|nagar)\b\.?")

# After an address cue, a capitalised name and a number is a street: "deliver to Dizengoff 99".
_STREET_AFTER_CUE = (rf"{_CAPW}(?:\s+(?:(?:{_CONNECT})\s+)?(?:{_CAPW}|{_L}{{1,4}}\.?)){{0,3}},?\s+"
                     rf"(?i:no\.?\s*)?{_HOUSE}\b")
# After an address cue, a capitalised name and a number is a street: "my address to Andrássy út 60".
_CUED_STREET = (r"(?<=(?i:address|adresse|anschrift|addr\.?|dirección|direccion|indirizzo|endereço|morada"
                r"|adres|adresa|osoite|cím|live\s+at|living\s+at|lives\s+at|moved\s+to)(?:\s+(?i:is|to|at))?:?\s{1,3})"
                + _STREET_AFTER_CUE)
# After "to" / "at" the same shape needs a place or postcode after it: "send the technician to Dizengoff
# 99, Tel Aviv" (not "go to Gate 12").
AT_STREET_RE = re.compile(r"(?<=\b(?i:to|at)\s{1,3})" + _STREET_AFTER_CUE)
ANCHOR_RE = re.compile("|".join(f"(?P<a{i}>{p})" for i, p in enumerate(
    (_STREET_NUM_FIRST, _STREET_FRENCH, _STREET_TYPE_FIRST, _STREET_COMPOUND, _STREET_COMPOUND_SEP,
     _STREET_ASIAN, _PO_BOX, _CUED_STREET))))
# "Church Lane" must be capitalised: "down the lane" is not an address.
WEAK_ANCHOR_RE = re.compile(_STREET_NO_NUM)

# ---------------------------------------------------------------- parts around an anchor
_SEP = r"(?:[ \t]*,[ \t]*(?:\n[ \t]*)?|[ \t]*\n[ \t]*|[ \t]*/[ \t]*|[ \t]+-[ \t]+|[ \t]+)"
_UNIT_WORDS = sorted("""apt apartment unit suite ste flat fl floor level lvl huis piso apto depto dpto dept
puerta pta esc escalera portal bloque m. lok. lokal bus boîte bte étage room rm no. no nr. nr d: block blk
number tower building bldg wing plot door stiege top whg. whg mieszkanie kv. kv app. app ap. ap bât. bât lot
villa col. colonia urb. bo. sector phase""".split(),
                     key=len, reverse=True)
_UNIT = (r"(?:house\s+no\.?|h\.\s?no\.?|\#|(?:" + "|".join(re.escape(w) for w in _UNIT_WORDS)
         + r")(?![\p{L}]))"
         r"\s*[:.#]?\s*(?:\d{1,4}[ ]?(?:[B-HJ-Zb-hj-z]\b|[AaIi]\b(?![ ]?[A-Za-z]))|[\w/-]{1,8}\b)\.?")
_FLOOR = (r"\d{1,2}\s?(?:\.?º|\.?ª|er|e|st|nd|rd|th)(?:\s?(?:izquierda|derecha|izq\.?|izda\.?|dcha\.?|esq\.?"
          r"|esquerdo|direito|dto\.?|[A-Z0-9]ª?(?![\w])))?\.?"
          r"|\d{1,2}\.\s?(?:th|tv|mf|sal)\b\.?"  # Danish floors: "3. th."
          r"|\d{1,2}/F\b")
_POSTCODE = (r"(?:[A-Z]\d[A-Z]\s?\d[A-Z]\d"                        # CA
             r"|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}"                  # UK
             r"|[A-Z]\d{2}\s?[A-Z\d]{4}"                            # IE Eircode
             r"|[A-Z]\d{4}[A-Z]{3}"                                 # AR
             r"|\d{4}\s?[A-Z]{2}"                                   # NL
             r"|\d{3}\s\d{2}"                                       # CZ, SE, GR
             r"|\d{2}-\d{3}"                                        # PL
             r"|\d{3,4}-\d{3,4}"                                    # JP, PT, US ZIP+4
             r"|[A-Z]{2}-\d{4,5}"                                  # LV-1010, LT-01103
             r"|\d{5}-\d{4}|\d{3,7}(?:-\d{3,5})?)\b")
_STATE = r"[A-Z]{2,3}\b"
_PLACE = rf"{_PLACEW}(?:[ \t]+(?:(?:{_CONNECT})[ \t]+)?{_PLACEW}){{0,2}}"
_NOT_PLACE = frozenset("""
please thanks thank hi hello dear yes no ok okay sure sorry the this that it i we you he she they my our
your his her their regards best cheers sincerely kind phone mobile email e-mail fax iban bic
monday tuesday wednesday thursday friday saturday sunday today tomorrow attention attn also and or but
order invoice account card visa mastercard amex ref reference
""".split())
UNIT_RE = re.compile(_UNIT + "|" + _FLOOR, re.IGNORECASE)
POSTCODE_RE = re.compile(_POSTCODE)
STATE_RE = re.compile(_STATE)
PLACE_RE = re.compile(_PLACE)
SEP_RE = re.compile(_SEP)
_BUILDING = (r"(?:apartments?|apts|residency|residences|towers?|court|house|cottage|building|bldg|plaza"
             r"|centre|center|complex|mansions?|heights|villa|villas|enclave|chambers|estate|farm|lodge|manor|hall"
             r"|condominium|condo|block\s+\w+)")
BUILDING_RE = re.compile(rf"{_PLACE}\s+{_BUILDING}\b|{_CAPW}(?:\s+{_CAPW})?(?=\s*,)", re.IGNORECASE)
_LOWER_PLACE_MAX = 2
_LOWER_WORD = re.compile(r"[a-z][a-z'-]+")


def _part_after(text: str, pos: int, lowercase: bool) -> tuple[int, str] | None:
    """(end, kind) of the address part starting at ``pos`` (after a separator), or None."""
    for kind, rx in (("unit", UNIT_RE), ("postcode", POSTCODE_RE)):
        m = rx.match(text, pos)
        if m and (kind != "postcode" or _postcode_ok(text, m)):
            return m.end(), kind
    m = PLACE_RE.match(text, pos)
    if m and not lowercase:
        words = [w.strip(".").lower() for w in m.group().split()]
        if words and words[0] not in _NOT_PLACE:
            keep = m.end()
            # stop before a word that starts a new sentence or is a form label ("Tel.", "Email:")
            for w in re.finditer(r"\S+", m.group()):
                if w.group().strip(".:").lower() in _NOT_PLACE:
                    keep = m.start() + w.start()
                    break
            if keep > pos:
                end = keep
                while end > pos and text[end - 1] in " \t":
                    end -= 1
                return end, "place"
    m = STATE_RE.match(text, pos)
    if m:
        return m.end(), "state"
    m = re.match(rf"\({_PLACE}\)", text[pos:])
    if m:  # "Montréal (Québec)"
        return pos + m.end(), "place"
    return None


def _postcode_ok(text: str, m: re.Match[str]) -> bool:
    """A postcode is not the start of an amount, a time or a phone number."""
    after = text[m.end():m.end() + 3]
    return not re.match(r"[.,:]\d|\s?(?:%|€|\$|am\b|pm\b)", after)


def _lowercase_place(text: str, pos: int, common: frozenset[str]) -> int:
    """End of up to two lowercase words from ``pos`` that are places or not common English words
    ("parramatta", "dayton ohio")."""
    from convtune.pii.lexicon import places

    end = pos
    for n in range(_LOWER_PLACE_MAX):
        at = end if n == 0 else end + 1
        if n and text[end:end + 1] != " ":
            break
        m = _LOWER_WORD.match(text, at)
        word = m.group() if m else ""
        if not m or word in _NOT_PLACE or word in _SPOKEN_FILLER or (word in common and word not in places()):
            break
        end = m.end()
    return end


_SPOKEN_FILLER = frozenset("um uh er erm ah yeah okay ok so like".split())


# Form fields that carry the rest of an address: "Postal code: 96100", "City: Rovaniemi", "PLZ/Ort: ...".
_ADDRESS_LABEL = re.compile(
    r"(?i:post(?:al)?\s*code|postcode|zip(?:\s*code)?|city|town|state|province|county|region|country|plz|ort"
    r"|plz/ort|ville|code\s+postal|cp|stadt|ciudad|città|cidade|cap|kod\s+pocztowy|miasto|suburb|district"
    r"|apt|unit|suite|address\s+line\s+\d|line\s+\d)\s*:[ \t]*")
_NUMBER_AFTER_PLACE = re.compile(r"\d{1,3}\b(?![.,:]\d)")


def _grow_right(text: str, end: int, lowercase: bool, common: frozenset[str]) -> tuple[int, set[str]]:
    kinds: set[str] = set()
    last = ""
    for _ in range(8):
        sep = SEP_RE.match(text, end)
        if not sep:
            break
        if text[end - 1:end] == "." and re.search(r"\p{L}{4,}\.$", text[max(0, end - 12):end]):
            break  # "... Elmwood Drive. In Madison": a full stop after a whole word ends the sentence
        if "\n" in sep.group() and text[sep.end():sep.end() + 1] == "\n":
            break  # a blank line ends the block
        at = sep.end()
        if "\n" in sep.group():
            label = _ADDRESS_LABEL.match(text, at)
            if label:
                at = label.end()
            elif re.match(r"[^\n:]{1,25}:", text[at:]):
                break  # another form field ("Phone:", "Name:")
        if last == "place" and sep.group() in (" ", "\t") and not POSTCODE_RE.match(text, at):
            num = _NUMBER_AFTER_PLACE.match(text, at)
            if num:  # "Praha 10", "Lekki Phase 1", "Sector 62"
                end, last = num.end(), "number"
                continue
        part = _part_after(text, at, lowercase)
        if part is None:
            if lowercase and sep.group().strip() in ("", ","):
                low_end = _lowercase_place(text, sep.end(), common)
                if low_end > sep.end():
                    end = low_end
                    kinds.add("place")
                    continue
            break
        new_end, kind = part
        if kind == "state" and not kinds & {"place"}:
            break  # "RR" alone, "OK": a state code follows a place
        end, last = new_end, kind
        kinds.add(kind)
    return end, kinds


_UNIT_BEFORE = re.compile(r"(?:house\s+no\.?|h\.\s?no\.?|no\.?|flat|unit|apt\.?|apartment|suite|door|lot)"
                          r"\s*$", re.IGNORECASE)
_LEFT_PARTS = (("unit", re.compile(rf"(?:{_UNIT}|{_FLOOR}|[A-Z]-?\d{{1,4}})$", re.IGNORECASE)),
               ("building", re.compile(rf"{_PLACE}\s+(?i:{_BUILDING})(?:\s+\w{{1,4}})?$")),
               ("house", re.compile(rf"(?:^|(?<=\s|:)){_PLACEW}$")))


def _grow_left(text: str, start: int) -> tuple[int, set[str]]:
    """Units, buildings and house names before the street: "Flat 3, 27 Queen's Road"."""
    from convtune.pii.lexicon import common_words, given_names, surnames

    kinds: set[str] = set()
    m = _UNIT_BEFORE.search(text[max(0, start - 12):start])
    if m:
        start = max(0, start - 12) + m.start()
        kinds.add("unit")
    for _ in range(3):
        sep = re.search(r"(?:,|\n)[ \t]*$|,?[ \t]*\n[ \t]*$", text[:start])
        if not sep:
            break
        head = text[:sep.start()].rstrip(" \t")
        for kind, rx in _LEFT_PARTS:
            m = rx.search(head, max(0, len(head) - 60))
            if m and m.group().split()[0].lower().strip(".") not in _NOT_PLACE and not (
                    kind == "house" and (m.group().lower() in given_names()
                                         or m.group().lower() in common_words()
                                         or m.group().lower() in surnames() or "\n" in sep.group()
                                         or any(ord(ch) > 127 for ch in m.group())
                                         or "'" in m.group() or "’" in m.group())):
                break
        else:
            break
        start = m.start()
        kinds.add(kind)
    return start, kinds


def _lowercase_text(text: str) -> bool:
    return not any(ch.isupper() for ch in re.sub(r"\bI\b", "", text))


def find_addresses(norm_text: str) -> list[tuple[int, int]]:
    """Address spans in the spoken-normalised text."""
    from convtune.pii.lexicon import common_words

    lowercase = _lowercase_text(norm_text)
    common = common_words() if lowercase else frozenset()
    out: list[tuple[int, int]] = []
    anchors = [(m.start(), m.end(), True) for m in ANCHOR_RE.finditer(norm_text)]
    anchors += [(m.start(), m.end(), False) for m in WEAK_ANCHOR_RE.finditer(norm_text)]
    anchors += [(m.start(), m.end(), None) for m in AT_STREET_RE.finditer(norm_text)]
    for s, e, strong in sorted(anchors, key=lambda a: (a[0], -a[1])):
        if any(a <= s and e <= b for a, b in out):
            continue  # inside an address already found (overlapping ones are merged below)
        while e > s and norm_text[e - 1] == ",":
            e -= 1
        right, rkinds = _grow_right(norm_text, e, lowercase, common)
        left, lkinds = _grow_left(norm_text, s)
        needed = {"postcode", "unit", "building"} | ({"place"} if strong is None else set())
        if not strong and not ((rkinds | lkinds) & needed):
            continue
        if not strong and "house" in lkinds and not rkinds & {"postcode"}:
            continue
        while right > e and norm_text[right - 1] in ".,; \t\n":
            right -= 1
        out.append((left, right))
    out.sort()
    merged: list[tuple[int, int]] = []
    for s, e in out:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


_ADDRESS_QUESTION = re.compile(r"(?i:\b(?:address|postcode|post\s+code|postal\s+code|zip(?:\s+code)?|city"
                               r"|town|suburb|which\s+street|street\s+name|eircode|plz)\b[^?]*\?)")


def asks_for_address(text: str) -> bool:
    """"What's the postal code?", "And your postcode?", "first line of your address?"."""
    return _ADDRESS_QUESTION.search(text) is not None


_CITY_QUESTION = re.compile(r"(?i:\b(?:city|town|suburb|which\s+street|street\s+name)\b)")


def answer_address(text: str, question: str = "") -> tuple[int, int] | None:
    """An answer made of address parts only ("00940 Helsinki", "PO5 2SF"); a place name alone
    ("Rovaniemi") only when the question asked for a city or street, and not a common word ("Home")."""
    from convtune.pii.lexicon import common_words

    lowercase = _lowercase_text(text)
    lead = re.match(r"\s*(?:(?:it's|its|it\s+is|yes|sure|ok|okay|um|uh)[,.]?\s+)*", text, re.IGNORECASE)
    pos = lead.end() if lead else 0
    part = _part_after(text, pos, lowercase)
    if part is None:
        return None
    end, kinds = _grow_right(text, part[0], lowercase, frozenset())
    kinds.add(part[1])
    if kinds <= {"place", "state"}:
        words = text[pos:end].split()
        if not _CITY_QUESTION.search(question) or any(
                w.lower().strip(".,") in common_words() or "'" in w or "’" in w for w in words):
            return None
    rest = text[end:].strip(" .,!")
    if rest and len(rest.split()) > 3:
        return None
    return pos, end
