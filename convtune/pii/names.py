"""Rule-based PERSON detection: trigger phrases, titles, dialogue cues and names from a lexicon.

No model: precision comes from requiring a trigger ("my name is", "Dr.", the answer to
"what's the name on the account?", a form's "Name:") or a name from the lexicons before
anything is called a name: ``first_names.txt`` (hand-made, US) and the ~20,000 given names
and ~20,000 surnames of :mod:`convtune.pii.lexicon` (Faker's 86 locales). Words are matched
with Unicode letter classes (``regex``'s ``\\p{Lu}``/``\\p{Ll}``), so ``Krisztián Szöllösy`` and
``Šárka Ottová`` read like ``Dana Whitfield``.
"""

from __future__ import annotations

from pathlib import Path

import regex as re

from convtune.pii import lexicon


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
# A first name followed by one of these is a business ("Aurora Air", "Jordan
# Insurance"), not a person.
_BUSINESS = _wordset("""
air airways airlines airline baggage bank banking wireless mobile telecom broadband fiber energy insurance
mutual health medical dental pharmacy clinic hospital rentals rental suites hotel hotels inn resorts travel
tours motors auto autos outdoor home homes furniture electronics market foods cafe coffee chat support
services service solutions group partners capital credit financial federal savings trust realty
""")
# "the Orlando general manager", "your Orlando Lake property": a determiner in
# front of a lone first name makes it a place or a thing.
_DETERMINER_BEFORE = re.compile(r"\b(?:the|a|an|your|our|their)\s+$", re.IGNORECASE)
# Before a spelled-out title word ("doctor", "miss") these make it an ordinary
# noun or verb: "another doctor covers her", "so you don't miss anything".
_TITLE_AS_NOUN = re.compile(
    r"(?:\b(?:the|a|an|another|other|your|my|our|his|her|their|this|that|same|new|covering|family|primary"
    r"|any|every|no)|'s)\s+$", re.IGNORECASE)
_MISS_AS_VERB = re.compile(r"(?:\b(?:to|not|never|will|would|could|might|can|may|you|we|they|i|also|really"
                           r"|don't|didn't|won't)|n't|'ll)\s+$", re.IGNORECASE)

# Brands that look like a title plus a name.
_BRANDS = frozenset({"mr coffee", "mr clean", "dr pepper", "dr martens", "dr scholl", "mr potato",
                     "mr peanut", "dr. pepper", "mr. coffee", "mr. clean", "dr. martens",
                     # businesses named like people
                     "wells fargo", "charles schwab", "morgan stanley", "goldman sachs", "john deere",
                     "dean witter", "merrill lynch", "marks spencer", "tommy hilfiger", "calvin klein",
                     "ralph lauren", "hugo boss", "jack daniels", "ben jerry", "johnson johnson"})

_UP, _LOW = r"\p{Lu}", r"\p{Ll}"
# One capitalised name word: "Müller", "McLeod", "O'Connor", "Fernández-López".
_NAME_WORD = rf"{_UP}{_LOW}+(?:{_UP}{_LOW}+)?(?:['’-]{_UP}?{_LOW}+)?"
_PARTICLE = (r"van|der|den|de|del|della|di|da|dos|du|la|le|von|bin|binti|bint|al|el|ní|nic|mac|ter|ten"
             r"|y|zu|ó|ua")
_PARTICLES = frozenset(_PARTICLE.split("|"))
_CAP = rf"{_UP}(?:['’]{_UP})?{_LOW}+(?:{_UP}{_LOW}+)?(?:-{_UP}{_LOW}+)?"
_ANYWORD = r"\p{L}(?:['’]\p{L})?\p{Ll}*(?:-\p{L}\p{Ll}+)?"
# Only the abbreviations take a full stop ("Dr. Yates"); "miss." ends a sentence.
_TITLE_RE = re.compile(r"\b(?:(?P<abbr>mr|mrs|ms|mx|dr|prof|sr|sra|srta|mme|mlle|dhr|mevr|sig|sig\.ra)\.?"
                       r"|(?P<word>miss|mister|missus|doctor|professor|herr|frau|señor|señora|señorita|signor"
                       r"|signora|monsieur|madame|pani|pan|senhor|senhora|meneer|mevrouw|gospodin|gospozha))\s+"
                       r"(?:(?:van|der|den|de|ter|von|da|di)\s+)*"
                       rf"(?P<name>{_ANYWORD})(?:\s+(?P<name2>{_ANYWORD}))?", re.IGNORECASE)
_STRONG_TRIGGER = re.compile(r"\b(?:my\s+name\s+is|my\s+name's|name's|name\s+is|names\s+is"
                             # the same in the languages a European support desk hears
                             r"|mein\s+name\s+ist|ich\s+heiße|je\s+m'appelle|mon\s+nom\s+est|me\s+llamo"
                             r"|mi\s+nombre\s+es|mi\s+chiamo|il\s+mio\s+nome\s+è|meu\s+nome\s+é|chamo-me"
                             r"|mam\s+na\s+imię|nazywam\s+się|mijn\s+naam\s+is|ik\s+heet|меня\s+зовут|моё\s+имя"
                             r"|мое\s+имя)\s+",
                             re.IGNORECASE)
# Form fields and message headers that hold a person's name: "Name: Lena Gruber", "Nachname: Gruber".
_NAME_LABEL = re.compile(
    r"(?:^|\n|[.;]\s+)[ \t]*(?:full\s+name|first\s+name|last\s+name|surname|given\s+name|family\s+name|name"
    r"|cardholder(?:\s+name)?|card\s+holder|account\s+holder|name\s+on\s+card|recipient|addressee|contact"
    r"|contact\s+person|attn\.?|attention|c/o|vorname|nachname|familienname|empfänger|nom|prénom"
    r"|destinataire|nombre|apellidos?|destinatario|nome|cognome|imię|nazwisko|naam|voornaam|achternaam"
    r"|sobrenome)[ \t]*[:\-][ \t]*"
    rf"(?P<name>{_NAME_WORD}(?:[ \t]+(?:{_UP}\.[ \t]+)?"
    rf"(?:(?:van|der|den|de|da|di|von|bin|al|el)[ \t]+)*"
    rf"{_NAME_WORD}){{0,3}})(?=[ \t]*(?:$|\n|[,.;(]))",
    re.IGNORECASE | re.MULTILINE)
# "It's under Kowalczyk", "booked under the name Tanaka".
_UNDER = re.compile(rf"\b(?:under|in\s+the\s+name\s+of|under\s+the\s+name(?:\s+of)?)\s+"
                    rf"(?P<name>{_NAME_WORD}"
                    rf"(?:\s+{_NAME_WORD})?)(?=\s*(?:$|[,.;!?]|\s+(?:please|thanks|and)\b))")
# "Tanaka-san", "Yuki-sama": a Japanese honorific names the person before it.
_HONORIFIC = re.compile(rf"\b(?P<name>{_NAME_WORD})-(?:san|sama|kun|chan|sensei|ji)\b")
# A full name after a word that announces a person: "account holder Olamide Bakare", "attn Somchai
# Wongsakul", "Contact Mei Ling Tan at", "addressed to Bronte Lee", "Is that Florence Achterberg?".
_PERSON_CUE = re.compile(
    r"\b(?i:account\s+holders?|card\s*holder|attn\.?|attention|contact|call|ring|addressed\s+to|recipient"
    r"|is\s+that|speak\s+to|ask\s+for|passenger|guest|patient|client|customer|signed\s+by|on\s+behalf\s+of)"
    r"[ \t]*:?[ \t]+"
    rf"(?P<name>{_NAME_WORD}(?:[ \t]+(?:(?i:{_PARTICLE})[ \t]+)?{_NAME_WORD}){{1,3}})"
    r"(?=[ \t]*(?:$|\n|[,.;:!?(]|\s+(?i:at|on|from|tel|phone|will|should|is|has|and)\b))")
# A role, then the person in it: "The technician, Avraham, will call", "the site manager, Hamid.".
_ROLE_APPOSITION = re.compile(
    r"\b(?i:the|our|your|my|their)\s+(?:\w+\s+)?(?i:technician|engineer|driver|courier|manager|supervisor|agent"
    r"|advisor|adviser|nurse|doctor|receptionist|representative|rep|installer|inspector|coordinator|colleague"
    r"|specialist|assistant|consultant|owner|landlord|tenant|contractor|caretaker)\s*,\s+"
    rf"(?P<name>{_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)(?=\s*[,.!?;]|\s*$)")
# The person spoken to, closing a sentence: "Sorry to hear that, Fraser.", "De acuerdo, Lucía.".
_VOCATIVE = re.compile(rf"(?<=\p{{L}}),[ \t]+(?P<name>{_NAME_WORD})"
                       r"(?=[ \t]*(?:[!?]|\.(?:\s+\p{Lu}\p{Ll}|\s*$)|$))")
# "Lufthansa customer care, Will speaking.": an agent's own name before "speaking".
_SPEAKING = re.compile(rf"(?:^|[,.!?][ \t]+)(?P<name>{_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)[ \t]+"
                       r"(?:speaking|here)(?=\s*[,.!?]|\s*$)")
# "I'll call Wojciech now", "ask for Bronwyn": one given name after a verb that reaches a person.
_CALL_NAME = re.compile(rf"\b(?i:call|ring|ask\s+for|speak\s+(?:to|with)|transfer\s+you\s+to"
                        rf"|put\s+you\s+through\s+to)"
                        rf"[ \t]+(?P<name>{_NAME_WORD})(?=\s*(?:[,.!?]|$|\s+(?i:now|today|back|later"
                        r"|tomorrow|directly|first|again)\b))")
# "— Lucía" signing a message on its own line.
_DASH_SIGNATURE = re.compile(rf"(?:^|\n|[.!?][ \t]+)(?:—|–|--)[ \t]*(?P<name>{_NAME_WORD}"
                             rf"(?:[ \t]+(?:(?i:ó|ní|mac|nic|van|de|der|da|di|bin|al)[ \t]+)?"
                             rf"{_NAME_WORD}){{0,2}})"
                             r"[ \t]*(?=\n|$)")
_MEDIUM_TRIGGER = re.compile(
    r"\b(?:this\s+is|it's|it\s+is|its|i'm|i\s+am|im|is\s+this|am\s+i\s+speaking\s+with|speaking\s+with"
    r"|speak\s+(?:to|with)|spoke\s+(?:to|with)|talked\s+to|call\s+me|talking\s+to|ask\s+for|transfer\s+you\s+to"
    r"|on\s+behalf\s+of|hi|hello|hey|thanks|thank\s+you|bye|goodbye|dear)"
    r"(?:,?\s+(?:my|our|his|her)\s+(?:husband|wife|mother|father|mom|dad|son|daughter|sister|brother"
    r"|partner|boss|friend)\s*,?)?,?\s+(?:(?:uh|um|umm|er|erm)\s+)*",
    re.IGNORECASE)
_PAIR_TRIGGER = re.compile(r"(?:i'm|i\s+am|im|am\s+i\s+speaking\s+with|speaking\s+with|speak\s+(?:to|with)"
                           r"|spoke\s+(?:to|with)|talked\s+to|talking\s+to|ask\s+for|transfer\s+you\s+to"
                           r"|on\s+behalf\s+of|dear)\b|\w+\s*,?\s+(?:my|our|his|her)\s", re.IGNORECASE)
# "Santa Clara", "St. Louis", "Fort Myers": a first name inside a place name.
_PLACE_PREFIX = re.compile(r"(?:san|santa|saint|st\.?|fort|ft\.?|port|mount|mt\.?|lake|new|los|las|el|la"
                           r"|cape)\s+$",
                           re.IGNORECASE)
_WORD_AT = re.compile(rf"{_ANYWORD}")
_CAP_WORD_RE = re.compile(rf"\b{_CAP}\b")
_SPELLED_RE = re.compile(r"\b[A-Za-z](?:-[A-Za-z]){2,}\b")
_SPELL_CUE = re.compile(r"spell", re.IGNORECASE)


def _word_at(text: str, pos: int) -> re.Match[str] | None:
    return _WORD_AT.match(text, pos)


def is_given(low: str) -> bool:
    """A given name in the hand-made list or the lexicon (lowercase input)."""
    return low in FIRST_NAMES or low in lexicon.given_names()


def is_surname(low: str) -> bool:
    return low in lexicon.surnames()


# Calendar words, which are given names in some locales ("June", "August", "Juli").
_CALENDAR = _wordset("""
january february march april may june july august september october november december juli juni januar
februar märz mai oktober dezember janvier février mars avril juin juillet août septembre octobre novembre
décembre enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre monday
tuesday wednesday thursday friday saturday sunday montag dienstag mittwoch donnerstag freitag samstag
sonntag lundi mardi mercredi jeudi vendredi samedi dimanche
""")
# Function words of other languages that open sentences capitalised ("Die Erstattung", "Les Tilleuls").
_FOREIGN_FUNCTION = _wordset("""
der die das den dem des ein eine einer eines ich sie wir ihr er es und oder mit von bei für ist sind war
le la les un une des du au aux et ou avec pour est sont je nous vous il elle ils elles ce cette
el los las lo una unos unas y o con para por es son yo usted nosotros il lo gli uno della con per sono
het een en van voor met ik wij jij zij o os um uma com para por eu você não sim ja nie tak
""")
# "San Francisco", "Port Louis": words that open place names.
_PLACE_WORDS = _wordset("san santa saint st sankt fort port mount mt lake new los las el la cape puerto"
                        " porto")
_NOT_NAME = _CALENDAR | _STOP | _NOT_SURNAME | _BUSINESS | _FOREIGN_FUNCTION | _PLACE_WORDS


def _known_or_foreign(word: str) -> bool:
    """A word of a name pair: in a name list, an initial, or spelled with letters English does not use."""
    low = word.lower().strip(".")
    return (low in FIRST_NAMES or low in lexicon.given_names() or low in lexicon.surnames() or len(low) == 1
            or any(ord(ch) > 127 for ch in word))


def _lexicon_name(low: str) -> bool:
    """A given name or surname of the lexicon that is not also a calendar or function word."""
    return (low in lexicon.given_names() or low in lexicon.surnames()) and low not in _NOT_NAME \
        and low not in AMBIGUOUS_NAMES and len(low) >= 3


def _is_name_word(word: str, *, lowercase_ok: bool) -> bool:
    low = word.lower()
    if low in _STOP or len(low) < 2:
        return False
    return word[0].isupper() or lowercase_ok


_SPACES = re.compile(r"[ \t]+")
_FILLERS = frozenset({"uh", "um", "umm", "er", "erm", "ah"})


def _extend_surname(text: str, first: re.Match[str], lowercase_ok: bool, max_extra: int = 1) -> int:
    """End offset after up to ``max_extra`` surname words following ``first``."""
    end = first.end()
    taken = 0
    while taken < max_extra:
        taken += 1
        m = _SPACES.match(text, end)
        nxt = _word_at(text, m.end()) if m else None
        if not nxt:
            break
        w = nxt.group()
        initial = re.match(rf"{_UP}\.[ \t]+", text[nxt.start():nxt.start() + 4])
        if initial and not lowercase_ok:  # "Faina D. Yefremova": a middle initial, the surname follows
            after = _word_at(text, nxt.start() + initial.end())
            if after and after.group()[0].isupper() and len(after.group()) > 1:
                nxt, w = after, after.group()
        particles = re.match(rf"(?:(?:{_PARTICLE})[ \t]+){{1,2}}(?={_UP})",
                             text[nxt.start():nxt.start() + 12])
        if particles and first.group()[0].isupper():  # "Pieter van der Berg", "Ahmad bin Rahman"
            after = _word_at(text, nxt.start() + particles.end())
            if after:
                nxt, w = after, after.group()
        if w.lower() in _FILLERS:
            # "derek um derek hollins": skip a filler when the name is repeated after it
            m2 = _SPACES.match(text, nxt.end())
            again = _word_at(text, m2.end()) if m2 else None
            if not again or again.group().lower() != first.group().lower():
                break
            nxt, w = again, again.group()
        if w.lower() == first.group().lower() and max_extra == 1:
            max_extra += 1  # "ramon ramon ortega": a stutter, the surname comes next
        if w.lower() in _NOT_SURNAME or w.lower() in _STOP or w.lower() in _BUSINESS or len(w) < 2:
            break
        if not (w[0].isupper() or (lowercase_ok and first.group()[0].islower())):
            break
        end = nxt.end()
    return end


_PREV_WORD = re.compile(rf"({_NAME_WORD})[ \t]+$")


def _after_given(text: str, pos: int) -> bool:
    """The capitalised word before ``pos`` is a given name: "Tóth Eszter" read from "Eszter"."""
    m = _PREV_WORD.search(text[max(0, pos - 30):pos])
    return bool(m) and is_given(m.group(1).lower()) and m.group(1).lower() not in _NOT_NAME


def _capitalised_pair(text: str, first: re.Match[str]) -> bool:
    """"Dana Whitfield": two capitalised non-function words read as a full name."""
    w = first.group()
    if not w[0].isupper() or w.lower() in _STOP or w.lower() in _NOT_SURNAME:
        return False
    return _extend_surname(text, first, lowercase_ok=False) > first.end()


def _lowercase_transcript(text: str) -> bool:
    """ASR output without capitals, where a lowercase word may still be a name."""
    return not any(ch.isupper() for ch in re.sub(r"\bI\b", "", text))


def _whole_word(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span to whole words: "Tom" in "Tomás" is not a name of its own."""
    while end < len(text):
        ch = text[end]
        if ch in "'’":  # O'Brien goes on; Hoffman's and Dev'll stop
            if not (end + 1 < len(text) and text[end + 1].isupper()):
                break
        elif not ch.isalpha():
            break
        end += 1
    while start > 0 and text[start - 1].isalpha():
        start -= 1
    return start, end


# How agents introduce themselves: "this is Steve, how can I help", "I'm Mei
# from Kestrel Mobile", "my name is Raj". One capitalised word right after the
# trigger and right before a comma, "speaking", "with", "from" ... is a first
# name even when it is not in our list. ("it's" is left out: "it's Visa.")
_INTRO = re.compile(r"\b(?:this\s+is|i'm|i\s+am|my\s+name\s+is|my\s+name's|name's|speaking\s+with"
                    r"|c'est|je\s+suis|ich\s+bin|hier\s+ist|soy|sono|sou|jestem|ik\s+ben|hier\s+is)\s+"
                    r"(?:(?:uh|um|er)\s+)*(?P<name>[A-Z][^\W\d_]+(?:-[A-Z][^\W\d_]+)?)"
                    r"(?=\s*[,.!?]|\s*$|\s+(?:speaking|here|with|from|at|in|on|de|aus|von|da|di)\b)",
                    re.IGNORECASE)
# The same introductions with a full name: "c'est Geneviève Tremblay.", "this is Olamide Bakare,".
_INTRO_FULL = re.compile(r"\b(?:this\s+is|i'm|i\s+am|c'est|je\s+suis|ich\s+bin|hier\s+ist|soy|sono|sou|jestem"
                         r"|ik\s+ben|hier\s+is)\s+"
                         rf"(?P<name>{_NAME_WORD}"
                         rf"(?:[ \t]+(?:(?:van|der|den|de|da|di|von|ter|ó|ní|bin)[ \t]+)?"
                         rf"{_NAME_WORD}){{1,2}})"
                         r"(?=\s*[,.!?]|\s*$|\s+(?:speaking|here|from|de|aus|von|da|di)\b)")
_NOT_INTRO = _wordset("""
sorry glad happy calling fine good great okay ok back here there just also still not new trying
looking going ready done sure afraid confused frustrated upset wondering canadian american
mr mrs ms mx dr miss mister missus doctor prof professor
""")
# "I'm Lark, the Larkspur virtual assistant", "I'm LakeBot": a bot's name is not PII.
_BOT_AFTER = re.compile(r"[^.!?]{0,40}\b(?:virtual|digital|automated|ai)\s+(?:assistant|agent)"
                        r"|[\s,]+(?:a|the|your)\s+(?:chat)?bot\b", re.IGNORECASE)


# "my husband, Raj Kumar, is on the account": a relation names the person after it.
_RELATION = re.compile(r"\b(?:my|our|his|her|their|your)\s+(?:husband|wife|spouse|partner|mother|father|mom"
                       r"|dad|son|daughter|sister|brother|grandson|granddaughter|grandmother|grandfather|aunt|uncle|niece"
                       r"|nephew|cousin|fiancée?|boyfriend|girlfriend|colleague|coworker|co-worker|friend|boss"
                       r"|manager|assistant|neighbou?r|roommate|flatmate|carer|caregiver|kid|child|stepson|stepdaughter)"
                       r"\s*,?\s+"
                       rf"(?P<name>{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}})",
                       re.IGNORECASE)
# "Hi Jolene," opening a message, "Best,\nTomás Rivera" signing it.
_GREETING = re.compile(r"(?:^|\n|[.!?¡]\s*)(?:hi|hello|hey|dear|thanks|thank\s+you|merci|danke|gracias|grazie"
                       r"|obrigad[oa]|dziękuję|dzięki|bonjour|hola|hallo|ciao|salut|hej|dank\s+je|bedankt|listo)"
                       r"[ \t]*,?[ \t]+"
                       rf"(?:(?:mr|mrs|ms|dr|herr|frau|sr|sra|m|mme)\.?[ \t]+)?"
                       rf"(?P<name>{_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)"
                       r"(?=[ \t]*(?:[,!:.]|\n|$))", re.IGNORECASE)
_SIGNATURE = re.compile(r"(?:thanks|thank\s+you|best|regards|cheers|sincerely|kind\s+regards|best\s+regards"
                        r"|warmly)[ \t]*,?[ \t]*\n[ \t]*"
                        rf"(?P<name>{_NAME_WORD}(?:[ \t]+(?:{_UP}\.[ \t]+)?{_NAME_WORD}){{0,2}})"
                        r"[ \t]*(?=\n|$)",
                        re.IGNORECASE)


def find_persons(text: str) -> list[tuple[int, int]]:
    spans = [_whole_word(text, s, e) for s, e in _find_persons(text)]
    return [(s, e) for s, e in spans if e > s]


# "Can I have your name?", "What's your son's name?", "Who am I speaking with?"
NAME_QUESTION = re.compile(r"\b(?:(?:your|his|her|their|the\s+\w+'s|\w+'s)\s+"
                           r"(?:full\s+|first\s+|last\s+|family\s+|given\s+|sur)?name"
                           r"|the\s+(?:full\s+|first\s+|last\s+|family\s+|given\s+|sur)name"
                           r"|what\s+(?:should|can|shall)\s+i\s+call\s+you|who\s+(?:should|shall)\s+i\s+say"
                           r"|name\s+(?:please|on\s+the)|who\s+(?:am\s+i|do\s+i\s+have|is\s+this|i'm)"
                           r"|pleasure\s+of\s+speaking)", re.IGNORECASE)
_ANSWER_LEAD = re.compile(r"\s*(?:(?:yes|yeah|sure|okay|ok|hi|hello|um|uh|umm|er|so)[,.!]?\s+)*"
                          r"(?:(?:it's|its|this\s+is|i'm|it\s+is)\s+)?")
_ANSWER_NAME = re.compile(rf"(?P<name>{_NAME_WORD}(?:\s+(?:{_UP}\.\s+)?(?:(?:{_PARTICLE})\s+)*{_NAME_WORD})"
                          rf"{{0,2}})"
                          r"(?=\s*(?:[,.;!?(]|$|\s+and\b))")


_LOWER_ANSWER = re.compile(r"(?P<name>\p{Ll}[\p{Ll}'’-]+(?:\s+\p{Ll}[\p{Ll}'’-]+){0,2})\s*[.!]?\s*$")


def answer_name(text: str) -> tuple[int, int] | None:
    """The name that opens an answer to a name question: "Oliver Grant, yes he sees ...", or, in a
    lowercase (ASR) transcript, an answer that is nothing but one to three uncommon words
    ("um yeah chidi okonkwo")."""
    lead = _ANSWER_LEAD.match(text)
    m = _ANSWER_NAME.match(text, lead.end() if lead else 0)
    if not m and _lowercase_transcript(text):
        m = _LOWER_ANSWER.match(text, lead.end() if lead else 0)
        if m and any(w in lexicon.common_words() or w in _NOT_NAME or w in _FILLERS
                     for w in m.group("name").split()):
            return None
    if not m:
        return None
    words = m.group("name").split()
    if any(w.lower() in _STOP or w.lower() in _NOT_SURNAME or w.lower() in _BUSINESS for w in words):
        return None
    return m.span("name")


def name_words(span_text: str) -> set[str]:
    """The words of a detected name worth looking for elsewhere in the conversation."""
    out = set()
    for w in re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)?", span_text):
        low = w.lower()
        if len(low) < 2 or low in _STOP or low in _NOT_SURNAME or low in _BUSINESS:
            continue
        out.add(low)
    return out


# Given names that are also everyday lowercase words ("they tried to rob me").
_WORDLIKE_NAMES = _wordset("""
rob jack ash angel earl lance roman noel mercedes kay jo ken dale glen al homer otis chase bob sally
pat sue rose guy hunter carol drew jay ray rich will bill mark faith hope joy dawn grace ivy iris
""")


_ROLE_WORDS = _wordset("""
agent customer caller member representative rep supervisor manager ivr bot system operator assistant human
user client patient speaker unknown person guest accounts advisor support team desk care services service
billing claims sales specialist technician tech nurse doctor dr receptionist front office virtual
""")


def speaker_name_words(label: str) -> set[str]:
    """Words of a speaker label that name a person ("Priya Natarajan", "Mina"), not a role ("Agent 2")."""
    words = re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)?", label)
    if not words or len(words) > 3 or any(not w[0].isupper() for w in words):
        return set()
    if any(w.lower() in _ROLE_WORDS or w.lower() in _BUSINESS or w.lower() in _STOP for w in words):
        return set()
    return name_words(label)


_UNICODE_WORD = re.compile(r"[^\W\d_]+")
_KNOWN_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
def _sentence_start(text: str, pos: int) -> bool:
    before = text[max(0, pos - 40):pos]
    stripped = before.rstrip(" \t")
    return (not stripped.strip() and pos < 40) or stripped.endswith((".", "!", "?", "\n"))
_NUMBERISH_AFTER = re.compile(r"\s+(?:\d|(?:the\s+)?(?:first|second|third|fourth|fifth|sixth|seventh|eighth"
                              r"|ninth|tenth|eleventh|twelfth|\w+teenth|twentieth|thirtieth|twenty|thirty|one|two|three|four|five"
                              r"|six|seven|eight|nine|ten)\b)", re.IGNORECASE)
_DATE_WORD_BEFORE = re.compile(r"\b(?:in|on|of|since|until|by|from|through|last|next|this|early|late|mid"
                               r"|before|after)\s+$", re.IGNORECASE)


def find_known_names(text: str, known: set[str]) -> list[tuple[int, int]]:
    """Every other mention of a name already found in the conversation: "Hi Dev",
    "Jordan filled me in", "the Keller residence". A capitalised neighbour joins
    it ("Mateo Morales" once "Morales" is known)."""
    if not known:
        return []
    lowercase = _lowercase_transcript(text)
    spans = []
    for m in _KNOWN_WORD.finditer(text):
        w = m.group()
        low = re.sub(r"['’]s$", "", w.lower())
        if low not in known or not (w[0].isupper() or lowercase):
            continue
        before = text[max(0, m.start() - 12):m.start()]
        after = text[m.end():m.end() + 25]
        if low in AMBIGUOUS_NAMES or low in FIRST_NAMES and low in _STOP:
            # "Will do.", "May I ...", "June first", "in April": the word, not the name.
            nxt = re.match(r"\s+([a-z']+)", after)
            if _sentence_start(text, m.start()) and nxt and nxt.group(1) in _STOP:
                continue
            if _NUMBERISH_AFTER.match(after) or _DATE_WORD_BEFORE.search(before):
                continue
        start, end = m.start(), m.start() + len(low)
        prev = re.search(r"(?:^|(?<=\s))([A-Z][a-z]+)\s+$", text[max(0, start - 30):start])
        if prev and not lowercase:
            pw = prev.group(1).lower()
            pstart = start - (len(text[max(0, start - 30):start]) - prev.start(1))
            if pw not in _STOP and pw not in _NOT_SURNAME and pw not in _BUSINESS and pw not in _NOT_INTRO:
                start = pstart
        nm = _UNICODE_WORD.match(text, m.start())
        if nm and nm.end() == m.start() + len(low) and not lowercase:
            end = max(end, _extend_surname(text, nm, lowercase_ok=False))
        spans.append((start, end))
    return spans


def _find_persons(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    lowercase = _lowercase_transcript(text)
    for m in _TITLE_RE.finditer(text):
        name = m.group("name")
        title = m.group("abbr") or m.group("word")
        key = f"{title.lower()} {name.lower()}"
        if key in _BRANDS or key.replace(".", "") in _BRANDS:
            continue
        if name.lower() in _STOP or name.lower() in _NOT_SURNAME or len(name) < 2:
            continue
        # In ordinary text a name is capitalised; only an all-lowercase (ASR)
        # transcript lets "mister simmons" through.
        if not (name[0].isupper() or lowercase):
            continue
        before = text[max(0, m.start() - 25):m.start()]
        if m.group("word") and (_TITLE_AS_NOUN.search(before)
                                or (title.lower() == "miss" and _MISS_AS_VERB.search(before))):
            continue
        end = m.end("name")
        name2 = m.group("name2")
        # A second word joins only when it is capitalised: "Dr. Mensah now" is not a surname.
        if name2 and name2[0].isupper() and name2.lower() not in _NOT_SURNAME and name2.lower() not in _STOP:
            end = m.end("name2")
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
        if low in FIRST_NAMES or (lowercase and _lexicon_name(low) and low in lexicon.given_names()):
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=True)))
        elif w[0].isupper() and _lexicon_name(low) and low in lexicon.given_names():
            end = _extend_surname(text, first, lowercase_ok=False)
            words = text[first.start():end].split()
            if text[first.start():end].lower() not in _BRANDS and not any(
                    x.lower() in lexicon.places() or x.lower() in _NOT_NAME for x in words):
                spans.append((first.start(), end))
        elif (low in AMBIGUOUS_NAMES and w[0].isupper()
              and not re.match(r"\s+(?:\d|the\b)", text[first.end():])):
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=False)))
        elif _PAIR_TRIGGER.match(m.group()) and _capitalised_pair(text, first):
            # Not after "this is"/"it's": "this is Wells Fargo" is how businesses answer.
            spans.append((first.start(), _extend_surname(text, first, lowercase_ok=False)))
    for m in _INTRO.finditer(text):
        w = m.group("name")
        low = w.lower()
        if not w[0].isupper() or low in _STOP or low in _NOT_SURNAME or low in _BUSINESS or low in _NOT_INTRO:
            continue
        if low.endswith("bot") or _BOT_AFTER.match(text, m.end("name")):
            continue
        spans.append((m.start("name"), m.end("name")))
    for rx in (_GREETING, _SIGNATURE, _RELATION, _NAME_LABEL, _UNDER, _HONORIFIC, _DASH_SIGNATURE,
               _INTRO_FULL, _PERSON_CUE, _VOCATIVE, _ROLE_APPOSITION, _SPEAKING, _CALL_NAME):
        for m in rx.finditer(text):
            words = [w for w in m.group("name").split() if w.lower() not in _PARTICLES]
            if not words or not all(w[0].isupper() for w in words):
                continue
            if rx is _RELATION and re.match(r"(?:our|their)\s+partner", m.group(), re.IGNORECASE):
                continue  # "our partner, Atlantica": a business partner
            if any(w.lower() in _STOP or w.lower() in _NOT_SURNAME or w.lower() in _BUSINESS
                   or w.lower() in _NOT_INTRO for w in words):
                continue
            if rx is _CALL_NAME and not is_given(words[0].lower()):
                continue
            if any(re.search(r"['’](?:s|re|ll|ve|d|m)$", w, re.IGNORECASE) for w in words):
                continue  # "He's here", "They're": a contraction, not a name
            if rx in (_INTRO_FULL, _PERSON_CUE, _VOCATIVE, _CALL_NAME) and (
                    m.group("name").lower() in _BRANDS or any(w.lower() in lexicon.common_words()
                                                              or w.lower() in lexicon.places()
                                                              or w.lower() in _NOT_NAME for w in words)
                    or not _known_or_foreign(words[0])):
                continue
            spans.append(m.span("name"))
    if lowercase:
        # ASR text has no capitals to go by; a given name from the list (not
        # one that is also a word: "will", "grace", "june") is still a name.
        for m in re.finditer(r"[a-z]+", text):
            w = m.group()
            if w in FIRST_NAMES and w not in _STOP and w not in _WORDLIKE_NAMES and len(w) >= 3:
                spans.append(m.span())
    for m in _CAP_WORD_RE.finditer(text):
        place = _PLACE_PREFIX.search(text[max(0, m.start() - 7):m.start()])
        low = m.group().lower()
        listed = low in FIRST_NAMES
        if not (listed or _lexicon_name(low)) or place:
            continue
        if _DETERMINER_BEFORE.search(text[max(0, m.start() - 8):m.start()]):
            continue
        nxt = _SPACES.match(text, m.end())
        nxt_word = _word_at(text, nxt.end()) if nxt else None
        if nxt_word and nxt_word.group()[0].isupper() and nxt_word.group().lower() in _BUSINESS:
            continue
        end = _extend_surname(text, m, lowercase_ok=False)
        if not listed:
            # A lexicon name alone is too often a word or a place in some language ("Sie", "Lane"):
            # it needs a capitalised name word next to it ("Giulia Romano", "Tóth Eszter").
            pair = text[m.start():end]
            if end == m.end() and not _after_given(text, m.start()):
                continue
            if not all(_known_or_foreign(w) for w in pair.split()):
                continue  # "Maple Grove", "Fresh Start": both words must read as names
            if pair.lower() in _BRANDS or any(w.lower() in _NOT_NAME or w.lower() in lexicon.places()
                                              for w in pair.split()):
                continue
        spans.append((m.start(), end))
    for m in _SPELLED_RE.finditer(text):
        near_name = any(0 <= m.start() - e <= 40 for _, e in spans)
        if near_name or _SPELL_CUE.search(text[max(0, m.start() - 30):m.start()]):
            spans.append((m.start(), m.end()))
    return spans
