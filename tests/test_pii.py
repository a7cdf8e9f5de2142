"""PII redaction: exact outputs, checksums, offsets, conversation handling and
the recall gate on the labelled corpus (benchmarks/pii_corpus.jsonl)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convtune.conversation import Conversation, Role, Turn
from convtune.pii import (
    ENTITY_TYPES,
    Entity,
    PiiSpan,
    aba_valid,
    find_pii,
    iban_valid,
    luhn_valid,
    normalize,
    placeholder,
    redact_conversation,
    redact_text,
)
from convtune.pii.evaluate import RECALL_GATES, evaluate, evaluate_corpus, load_corpus, main, parse_markup
from convtune.pii.entities import ADDRESS, PERSON, PHONE
from convtune.pii.spoken import REPEAT, TEENS, TENS, UNITS

CORPUS = Path(__file__).resolve().parents[1] / "benchmarks" / "pii_corpus.jsonl"


def conv(*turns: tuple[str, str], labels: dict | None = None) -> Conversation:
    return Conversation(
        id="c1",
        turns=[Turn(id=f"t{i}", speaker=s, text=t, start=float(i), end=i + 0.5)
               for i, (s, t) in enumerate(turns)],
        labels=labels or {},
    )


# ------------------------------------------------------------------ checksums

def test_luhn():
    for good in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert luhn_valid(good)
    for bad in ("4111111111111112", "1234567890123456", "", "41111111a1111111"):
        assert not luhn_valid(bad)


def test_iban():
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("fr14 2004 1010 0505 0001 3m02 606")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # check digits off
    assert not iban_valid("GB82 WEST 1234 5698 7654")  # wrong length for GB
    assert not iban_valid("XX82 WEST 1234 5698 7654 32")  # unknown country


def test_aba():
    for good in ("021000021", "011000015", "121000358", "026009593"):
        assert aba_valid(good)
    assert not aba_valid("021000022")
    assert not aba_valid("12345678")
    assert not aba_valid("991000021")  # checksum alone is not enough: prefix 99 is unassigned


# ------------------------------------------------------------------ normalisation

def test_normalize_maps_back_to_original_offsets():
    text = "it's four oh one two, double eight eight, twenty twenty-one"
    n = normalize(text)
    assert n.text == "it's 4 0 1 2, 88 8, 20 21"
    s = n.text.index("88")
    assert text[slice(*n.original_span(s, s + 2))] == "double eight"
    s = n.text.index("21")
    assert text[slice(*n.original_span(s, s + 2))] == "twenty-one"
    s = n.text.index("4")
    assert text[slice(*n.original_span(s, n.text.index("2,") + 1))] == "four oh one two"


def test_oh_is_zero_only_next_to_numbers():
    assert normalize("oh, I see").text == "oh, I see"
    assert normalize("oh five").text == "0 5"
    assert normalize("one eight hundred five five five").text == "1 800 5 5 5"
    assert normalize("two thousand and three").text == "2003"


# ------------------------------------------------------------------ redact_text: exact outputs

@pytest.mark.parametrize("text, expected", [
    ("my card is 4111 1111 1111 1111 thanks", "my card is <CREDIT_CARD> thanks"),
    ("card number is 6011-0009-9013-9424, exp 09/27", "card number is <CREDIT_CARD>, exp 09/27"),
    ("okay it's four one one one one one one one one one one one one one one one",
     "okay it's <CREDIT_CARD>"),
    (("[the card is] double five double five, double five double five, double five double five, "
      "double four double four"), "[the card is] <CREDIT_CARD>"),
    ("it's 4242 four two four two 4242 four two four two", "it's <CREDIT_CARD>"),
    ("um six oh one one uh one one one one uh one one one one one one one seven", "um <CREDIT_CARD>"),
    ("card 4111111111111111 exp 12/26 cvv 987", "card <CREDIT_CARD> exp 12/26 cvv <CVV>"),
    ("the security code on the back of my card is two four eight",
     "the security code on the back of my card is <CVV>"),
    ("my social is 078-05-1120", "my social is <SSN>"),
    ("last four of my social is 1120", "last four of my social is <SSN>"),
    ("my social security number is oh seven eight uh oh five uh one one two zero",
     "my social security number is <SSN>"),
    ("you can reach me at (415) 555-0134 or +44 20 7946 0958", "you can reach me at <PHONE> or <PHONE>"),
    ("my phone number is three one two, double five five, oh one four two", "my phone number is <PHONE>"),
    ("my email is jay.park@example.com", "my email is <EMAIL>"),
    ("it's jay dot park at example dot com", "it's <EMAIL>"),
    ("the email is sarah underscore johnson at example dot org", "the email is <EMAIL>"),
    ("my IBAN is GB82 WEST 1234 5698 7654 32", "my IBAN is <IBAN>"),
    ("routing 021000021, account 000987654321", "routing <ROUTING_NUMBER>, account <ACCOUNT_NUMBER>"),
    ("wire it to account 9876543210", "wire it to account <ACCOUNT_NUMBER>"),
    ("I live at 1234 Elm Street, Apt 5 in Springfield", "I live at <ADDRESS> in Springfield"),
    ("it's twelve thirty four elm street", "it's <ADDRESS>"),
    ("my name is Sarah Johnson and I was born on March 3rd, 1985",
     "my name is <PERSON> and I was born on <DATE_OF_BIRTH>"),
    ("my date of birth is 12-19-1990", "my date of birth is <DATE_OF_BIRTH>"),
    ("Thank you for calling Acme Wireless, this is Mike, how can I help you?",
     "Thank you for calling Acme Wireless, this is <PERSON>, how can I help you?"),
    ("Am I speaking with Mr. Patel?", "Am I speaking with Mr. <PERSON>?"),
])
def test_redact_text_exact(text, expected):
    assert redact_text(text)[0] == expected


@pytest.mark.parametrize("text", [
    "your total comes to $45.99, and with tax it's $49.67.",
    "my order number is 1234 5678 9012 3456 and it still hasn't shipped",
    "your confirmation number is seven three four nine two one eight",
    "I'm on flight UA 1234 departing at 6:45 tomorrow",
    "the technician appointment is March 3rd between 8 and 12",
    "I ordered it on 04/12/2023 and it never arrived",
    "I've been on the Premium 500 plan since 2019",
    "I went to the store on Elm Street but it was closed",
    "I'm sorry, this is ridiculous, I'm really frustrated",
    "the tracking number is 1Z999AA10123456784",
    "I drove 20 minutes down the road to the store",
    "my birthday coupon expired on May 2nd before I could use it",
    "you can also go to example dot com slash support",
    "I bank with Chase and Wells Fargo",
    "I bought a Mr. Coffee maker and it stopped working",
    "I paid 1,250 dollars for this and the charge of $1,299.00 on the 14th is wrong",
    "Thanks for calling Acme Wireless, how can I help you today?",
    "it's been like two or three weeks, and I've called maybe five or six times",
    "I have 123 apples and 45 oranges",
    "Thank you for calling, this is Wells Fargo, how can I help?",
    "it's Los Angeles, not San Francisco",
    "Your balance of 1,234,567.89 is past due",
    "the promo expires December 31st, 2024",
    "my card was declined 3 times on March 4th",
])
def test_hard_negatives_untouched(text):
    redacted, spans = redact_text(text)
    assert redacted == text, spans


def test_find_pii_offsets_index_original_text():
    text = "Hi, I'm Tom Becker. Card four one one one one one one one one one one one one one one one, " \
           "email tom dot becker at example dot com, cell (312) 555-0135."
    spans = find_pii(text)
    assert {s.entity for s in spans} == {"PERSON", "CREDIT_CARD", "EMAIL", "PHONE"}
    for s in spans:
        assert isinstance(s, PiiSpan) and s.turn_index is None
        assert text[s.start:s.end] == s.text
    card = next(s for s in spans if s.entity == "CREDIT_CARD")
    assert card.text.startswith("four one") and card.text.endswith("one")


def test_placeholders():
    assert placeholder("CREDIT_CARD") == "<CREDIT_CARD>"
    assert Entity.PHONE.placeholder == "<PHONE>"
    assert set(ENTITY_TYPES) == {"CREDIT_CARD", "CVV", "SSN", "PHONE", "EMAIL", "IBAN", "ACCOUNT_NUMBER",
                                 "ROUTING_NUMBER", "DATE_OF_BIRTH", "ADDRESS", "PERSON"}


# ------------------------------------------------------------------ conversations

def test_card_split_across_turns():
    c = conv(("Agent", "Okay, what's the card number?"),
             ("Customer", "four one one one one one one one"),
             ("Agent", "go ahead"),
             ("Customer", "one one one one one one one one"))
    red, spans = redact_conversation(c)
    assert [t.text for t in red.turns] == [
        "Okay, what's the card number?", "<CREDIT_CARD>", "go ahead", "<CREDIT_CARD>"]
    assert [(s.turn_index, s.entity) for s in spans] == [(1, "CREDIT_CARD"), (3, "CREDIT_CARD")]


def test_ssn_split_in_three_turns_typed_by_question():
    c = conv(("Agent", "Can I get your social?"), ("Customer", "zero seven eight"), ("Agent", "okay"),
             ("Customer", "oh five"), ("Agent", "yes"), ("Customer", "one one two oh"))
    red, _ = redact_conversation(c)
    assert [t.text for t in red.turns] == [
        "Can I get your social?", "<SSN>", "okay", "<SSN>", "yes", "<SSN>"]


def test_phone_split_with_area_code():
    c = conv(("Agent", "What number should we call you back on?"), ("Customer", "area code four one five"),
             ("Agent", "okay"), ("Customer", "five five five oh one three four"))
    assert [t.text for t in redact_conversation(c)[0].turns][1:] == ["area code <PHONE>", "okay", "<PHONE>"]


def test_context_from_agent_question():
    c = conv(("Agent", "And the security code on the back?"), ("Customer", "seven three one"),
             ("Agent", "date of birth?"), ("Customer", "june fifth nineteen eighty two"),
             ("Agent", "and the last four of your social?"), ("Customer", "1120"),
             ("Agent", "what's the routing number on the check?"),
             ("Customer", "oh two one oh oh oh oh two one"))
    red, _ = redact_conversation(c)
    assert [t.text for t in red.turns][1::2] == ["<CVV>", "<DATE_OF_BIRTH>", "<SSN>", "<ROUTING_NUMBER>"]


def test_false_start_then_full_number():
    c = conv(("Agent", "what's your social security number?"), ("Customer", "two one nine"),
             ("Agent", "sorry?"),
             ("Customer", "two one nine, oh nine, nine nine nine nine"))
    assert [t.text for t in redact_conversation(c)[0].turns][1:] == ["<SSN>", "sorry?", "<SSN>"]


def test_separate_numbers_are_not_stitched():
    # Two complete numbers in a row stay two numbers; a new question breaks a chain.
    c = conv(("Customer", "my card is 4111 1111 1111 1111"), ("Agent", "and the security code?"),
             ("Customer", "123"))
    red, _ = redact_conversation(c)
    assert [t.text for t in red.turns] == ["my card is <CREDIT_CARD>", "and the security code?", "<CVV>"]


def test_spoken_email_split_across_turns():
    c = conv(("Customer", "the email is jay dot park"), ("Agent", "okay"), ("Customer", "at example dot com"))
    assert [t.text for t in redact_conversation(c)[0].turns] == ["the email is <EMAIL>", "okay", "<EMAIL>"]


def test_redact_conversation_keeps_everything_else():
    c = conv(("Agent", "Thanks for calling, this is Jennifer with billing."),
             ("Customer", "hi, my number is 415-555-0199 and my order is 88213"),
             labels={"summary": "Customer Sarah Johnson (415-555-0199) asked about order 88213",
                     "intents": ["update phone to 415-555-0199", "billing"],
                     "fields": {"email": "jay.park@example.com", "count": 3}, "score": 0.5})
    c.turns[1].role = Role.customer
    red, spans = redact_conversation(c)
    assert red is not c and c.turns[1].text.startswith("hi, my number is 415")  # input untouched
    assert [t.id for t in red.turns] == [t.id for t in c.turns]
    assert [(t.speaker, t.role, t.start, t.end) for t in red.turns] == \
           [(t.speaker, t.role, t.start, t.end) for t in c.turns]
    assert red.metadata == c.metadata and red.id == c.id
    assert red.turns[0].text == "Thanks for calling, this is <PERSON> with billing."
    assert red.turns[1].text == "hi, my number is <PHONE> and my order is 88213"
    assert red.labels == {"summary": "Customer <PERSON> (<PHONE>) asked about order 88213",
                          "intents": ["update phone to <PHONE>", "billing"],
                          "fields": {"email": "<EMAIL>", "count": 3}, "score": 0.5}
    for s in spans:
        assert c.turns[s.turn_index].text[s.start:s.end] == s.text
    Conversation.model_validate(red.model_dump())  # still a valid conversation


def test_speaker_labels_are_not_redacted():
    c = conv(("Sarah Johnson", "hello, I need help with my bill"))
    red, spans = redact_conversation(c)
    assert red.turns[0].speaker == "Sarah Johnson" and spans == []


# ------------------------------------------------------------------ corpus and gate

_SPOKEN_WORDS = set(UNITS) | set(TEENS) | set(TENS) | set(REPEAT) | {"oh"}


def test_markup_parser():
    clean, marks = parse_markup("card [[CREDIT_CARD#g1:four one]] and [[NEG:$5]]")
    assert clean == "card four one and $5"
    assert marks == [("CREDIT_CARD", "g1", 5, 13), ("NEG", None, 18, 20)]
    assert clean[5:13] == "four one"


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CORPUS)


@pytest.fixture(scope="module")
def report(corpus):
    return evaluate(corpus)


def test_corpus_size_and_coverage(corpus):
    instances = [inst for item in corpus for inst in item.instances]
    counts = {et: sum(1 for i in instances if i.entity == et) for et in ENTITY_TYPES}
    assert len(instances) >= 200
    for et in ("CREDIT_CARD", "SSN", "PHONE", "EMAIL"):
        assert counts[et] >= 25, (et, counts[et])
    for et in ENTITY_TYPES:
        assert counts[et] >= 15, (et, counts[et])
    spoken = [i for i in instances
              if any(_SPOKEN_WORDS & set(re.findall(r"[a-z]+", p.text.lower())) for p in i.parts)
              and i.entity not in ("PERSON", "ADDRESS")]
    assert len(spoken) >= 40
    assert sum(1 for i in instances if i.split_across_turns) >= 12
    assert sum(len(item.negatives) for item in corpus) >= 60


def test_recall_gate(report):
    table = report.format_table()
    for et, floor in RECALL_GATES.items():
        assert report.scores[et].recall >= floor, f"{et} recall below {floor}\n{table}"


INTL_CORPUS = CORPUS.with_name("pii_corpus_intl.jsonl")
# Issue 16's gates, on both corpora: the first (pii_corpus.jsonl) and the second, written by someone
# who had not read the rules (pii_corpus_intl.jsonl: other countries' formats, names and addresses).
BOTH_GATES = RECALL_GATES
PRECISION_FLOOR = 0.95


@pytest.mark.parametrize("corpus", [CORPUS, INTL_CORPUS], ids=["pii_corpus", "pii_corpus_intl"])
def test_recall_and_precision_gates_on_both_corpora(corpus):
    scored = evaluate_corpus(corpus)
    assert scored.micro.support >= 300 and scored.negatives >= 100
    table = scored.format_table()
    for et, floor in BOTH_GATES.items():
        assert scored.scores[et].recall >= floor, f"{et} recall below {floor}\n{table}"
    for et, sc in scored.scores.items():
        assert sc.precision >= PRECISION_FLOOR, f"{et} precision below {PRECISION_FLOOR}\n{table}"


@pytest.mark.parametrize("text, kind, span", [
    ("Rufen Sie mich an: +49 30 901820, danke", PHONE, "+49 30 901820"),
    ("my number is 345-899-3560x4587", PHONE, "345-899-3560x4587"),
    ("Bitte an Hauptstraße 5, 10115 Berlin senden.", ADDRESS, "Hauptstraße 5, 10115 Berlin"),
    ("Ship to Flat 3, 27 Queen's Road, Manchester M1 2AB please", ADDRESS,
     "Flat 3, 27 Queen's Road, Manchester M1 2AB"),
    ("Krisztián Szöllösy here, about my order", PERSON, "Krisztián Szöllösy"),
])
def test_international_formats(text, kind, span):
    spans = [(sp.entity, sp.text) for sp in redact_text(text)[1]]
    assert (kind, span) in spans, spans


def test_report_table_lists_every_type(report):
    table = report.format_table()
    for et in ENTITY_TYPES:
        assert et in table
    assert "ALL" in table and "precision" in table
    assert report.micro.support == sum(s.support for s in report.scores.values())


def test_precision_floor(report):
    # Not an issue gate; catches a change that starts redacting ordinary text.
    assert report.micro.precision >= 0.95, report.format_table()
    assert report.negatives_hit <= 0.05 * report.negatives


def test_main_returns_zero(capsys):
    assert main(CORPUS) == 0
    assert "CREDIT_CARD" in capsys.readouterr().out


# ------------------------------------------------------------------ regressions from the sample-data review
# Each case is a general pattern found when reviewing every span on examples/data
# (fresh wording, not copied from those files). See tests/test_pii_sample_leaks.py
# for the leak check on the sample data itself.

@pytest.mark.parametrize("text, expected", [
    # shape beats a bare "account" cue
    ("account holder verification: 078-05-1120", "account holder verification: <SSN>"),
    ("the best number for the account is (312) 555-0142", "the best number for the account is <PHONE>"),
    # spoken e-mail: starts at the local part; asides; two-word local parts; amounts are not local parts
    ("The email on file shows j dot okonkwo at example dot org.", "The email on file shows <EMAIL>."),
    ("it's pat morrow, all one word, at example dot com", "it's <EMAIL>"),
    ("carl weston sixty-six at example dot net", "<EMAIL>"),
    ("Victor Hale. Victor dot hale at example dot org.", "<PERSON>. <EMAIL>."),
    ("there's a charge of ninety dollars and fifteen cents at S-H-O-P-N-O-W dot com",
     "there's a charge of ninety dollars and fifteen cents at S-H-O-P-N-O-W dot com"),
    ("Send it to m dot quist at example dot com. So M, Q, U, I, S, T.", "Send it to <EMAIL>. So <EMAIL>."),
    # a veto ("order") covers the id it introduces, not the phone number after it
    ("order KX-5521907. callback number is (617) 555-0111", "order KX-5521907. callback number is <PHONE>"),
    # ratios, prices per seat, clock times are not numbers to redact or addresses
    ("your liability limits are 100/300 right now", "your liability limits are 100/300 right now"),
    ("Seat selection is $35 per seat each way.", "Seat selection is $35 per seat each way."),
    ("You're booked for Tuesday at 2:30 with Dr. Patel.",
     "You're booked for Tuesday at 2:30 with Dr. <PERSON>."),
    # addresses: spoken house numbers, unit letters, "number 9", spoken PO boxes
    ("It's seventeen oh four Juniper Avenue, Unit C, in Dayton.", "It's <ADDRESS>, in Dayton."),
    ("it's sixty one ash lane apartment six d dayton ohio", "it's <ADDRESS>"),
    ("I'm at 112 Cedar Street, number 9.", "I'm at <ADDRESS>."),
    ("you can mail it to p o box three three eight one, columbus", "you can mail it to <ADDRESS>"),
    # "the card" as the object read from; spelled letters belong to the id
    ("The member ID is, let me get the card out, Q R T, five five one, two two, nine zero four eight.",
     "The member ID is, let me get the card out, <ACCOUNT_NUMBER>."),
    # not names: the verb "miss", "another doctor", brands, places, bots
    ("It's easy to miss. Unfortunately it can't be added later.",
     "It's easy to miss. Unfortunately it can't be added later."),
    ("I'll switch it to email so you don't miss anything.",
     "I'll switch it to email so you don't miss anything."),
    ("When a doctor is out, another doctor covers her patients.",
     "When a doctor is out, another doctor covers her patients."),
    ("Welcome to Aurora Air chat. Please type your question.",
     "Welcome to Aurora Air chat. Please type your question."),
    ("I'm also telling the Orlando general manager about this.",
     "I'm also telling the Orlando general manager about this."),
    ("Welcome! I'm LakeBot, your virtual assistant. How can I help?",
     "Welcome! I'm LakeBot, your virtual assistant. How can I help?"),
    # names: the name alone after a title, whole words, intros, letters, relatives, stutters
    ("Dr. Okoro will call you back today.", "Dr. <PERSON> will call you back today."),
    ("okay mister alvarez do you have the order number", "okay mister <PERSON> do you have the order number"),
    ("Thank you, Tomás. You've been very patient.", "Thank you, <PERSON>. You've been very patient."),
    ("Northside Bank, this is Steve, how can I help you today?",
     "Northside Bank, this is <PERSON>, how can I help you today?"),
    ("Ines Varga, V, A, R, G, A.", "<PERSON>, <PERSON>."),
    ("robert fenwick f e n w i c k", "<PERSON> <PERSON>"),
    ("Hi Mariska,\n\nThanks for writing in.\n\nBest,\nTeodor Lind",
     "Hi <PERSON>,\n\nThanks for writing in.\n\nBest,\n<PERSON>"),
    ("my wife, Ingrid Solberg, is on the account too", "my wife, <PERSON>, is on the account too"),
    ("yes hello this is uh walter um walter pryzbylski", "yes hello this is uh <PERSON>"),
    # a year said twice
    ("her birthday is uh june second eighty four nineteen eighty four", "her birthday is uh <DATE_OF_BIRTH>"),
])
def test_sample_review_redact_text(text, expected):
    assert redact_text(text)[0] == expected


@pytest.mark.parametrize("turns, expected", [
    # a street address after "the address on the account" is an ADDRESS
    ((("Agent", "Can you confirm the address on the account?"),
      ("Customer", "Sure, it's 4410 Birch Hollow Lane, unit 7, Westfield.")),
     ["Can you confirm the address on the account?", "Sure, it's <ADDRESS>."]),
    # spoken speeds after an account cue
    ((("Agent", "Can I have the account phone number?"),
      ("Customer", "It's been slow for weeks. I pay for three hundred megabits and I'm getting thirty. "
                   "Forty if I'm lucky.")),
     ["Can I have the account phone number?",
      "It's been slow for weeks. I pay for three hundred megabits and I'm getting thirty. "
      "Forty if I'm lucky."]),
    # spoken money amounts said after one's own "checking" cue
    ((("Agent", "The fee can come out of your checking with us."), ("Customer", "Fine."),
      ("Agent", "So your next payment would be April second, two forty-one seventy plus the fee, "
                "two seventy-six seventy.")),
     ["The fee can come out of your checking with us.", "Fine.",
      "So your next payment would be April second, two forty-one seventy plus the fee, "
      "two seventy-six seventy."]),
    # a case number read back, then "Oh, one more thing"
    ((("Agent", "Your case number is F K four four one oh two nine three eight."),
      ("Customer", "F K four four one oh two nine three eight. Okay. Oh, one more thing, can I pay online?")),
     ["Your case number is F K four four one oh two nine three eight.",
      "F K four four one oh two nine three eight. Okay. Oh, one more thing, can I pay online?"]),
    # a read-back of the agent's claim number ("mobile unit" is not a phone cue)
    ((("Agent", "a technician will come out in a mobile unit, and the claim number on our side is "
                "three one oh five two two k four"),
      ("Customer", "okay three one oh five two two k four got it")),
     ["a technician will come out in a mobile unit, and the claim number on our side is "
      "three one oh five two two k four", "okay three one oh five two two k four got it"]),
    # a card read in three turns while the agent echoes the first group
    ((("Customer", "It's an Amex. Three seven one four..."), ("Agent", "Three seven one four, go ahead."),
      ("Customer", "Four nine six three five three."), ("Agent", "Uh-huh."),
      ("Customer", "Nine eight four three one.")),
     ["It's an Amex. <CREDIT_CARD>...", "<CREDIT_CARD>, go ahead.", "<CREDIT_CARD>.", "Uh-huh.",
      "<CREDIT_CARD>."]),
    # "ending in" is a last four; one-time codes are not account numbers
    ((("Agent", "The sign-in code goes to a number ending in 0163, is that still yours?"),),
     ["The sign-in code goes to a number ending in 0163, is that still yours?"]),
    ((("Agent", "I'll text a verification code to the number on the account. Read it back when you get it."),
      ("Customer", "Got it. Six one seven, two two nine.")),
     ["I'll text a verification code to the number on the account. Read it back when you get it.",
      "Got it. Six one seven, two two nine."]),
    # one's own earlier question does not type a date said later in one's turn ...
    ((("Agent", "And your date of birth?"), ("Customer", "March ninth, nineteen seventy."),
      ("Agent", "Thanks. The renewal is due on May fourth, after that the policy lapses.")),
     ["And your date of birth?", "<DATE_OF_BIRTH>.",
      "Thanks. The renewal is due on May fourth, after that the policy lapses."]),
    # ... but a read-back at the start of the turn keeps its type
    ((("Agent", "Date of birth?"), ("Customer", "Four, twelve, sixty-eight."),
      ("Agent", "April twelfth, 1968. Thank you.")),
     ["Date of birth?", "<DATE_OF_BIRTH>.", "<DATE_OF_BIRTH>. Thank you."]),
    # ratios and ordinal ranges after a policy number; spelled letters belong to the policy number
    ((("Agent", "Can I get your name and policy number?"),
      ("Customer", "Sure, Dana Voss, policy K W A five five one nine zero two."),
      ("Agent", "Thanks. Your limits are 100/300 and I have you for the 14th-16th.")),
     ["Can I get your name and policy number?", "Sure, <PERSON>, policy <ACCOUNT_NUMBER>.",
      "Thanks. Your limits are 100/300 and I have you for the 14th-16th."]),
    # a flight number after "confirmation code" is not a CVV
    ((("Agent", "Could you send me your confirmation code?"), ("Customer", "QX7T2M"),
      ("Agent", "Thanks. I see TK 2210 leaving at 6:05 pm.")),
     ["Could you send me your confirmation code?", "QX7T2M", "Thanks. I see TK 2210 leaving at 6:05 pm."]),
    # "social media" is not an SSN cue
    ((("Agent", "Pick a phrase that's not on your social media."), ("Customer", "okay."),
      ("Agent", "Great. Also forward the scam text to seven seven two six.")),
     ["Pick a phrase that's not on your social media.", "okay.",
      "Great. Also forward the scam text to seven seven two six."]),
    # a question for a number we have no cue for ends the context search
    ((("Customer", "I want to update my phone and my address."),
      ("Agent", "Sure. What's your FlyerPlus number?"),
      ("Customer", "F P seven seven one, four oh two, nine nine three.")),
     ["I want to update my phone and my address.", "Sure. What's your FlyerPlus number?",
      "<ACCOUNT_NUMBER>."]),
    # a name found once is redacted everywhere in the conversation
    ((("Agent", "Skyline Mobile, my name is Dev."), ("Customer", "Hi Dev, this is Ana Ruiz."),
      ("Agent", "Thanks, Ana. One moment."), ("Customer", "Thanks Dev.")),
     ["Skyline Mobile, my name is <PERSON>.", "Hi <PERSON>, this is <PERSON>.",
      "Thanks, <PERSON>. One moment.", "Thanks <PERSON>."]),
    # the answer to a name question
    ((("Agent", "What's your son's name?"), ("Customer", "Tobias Wren, he's seven.")),
     ["What's your son's name?", "<PERSON>, he's seven."]),
])
def test_sample_review_conversations(turns, expected):
    red, spans = redact_conversation(conv(*turns))
    assert [t.text for t in red.turns] == expected
    for s in spans:
        assert turns[s.turn_index][1][s.start:s.end] == s.text


def test_named_speaker_is_redacted_in_the_text_but_not_as_speaker():
    c = conv(("Mina", "Hi, this is the support desk."), ("Customer", "thanks Mina, that helped"))
    red, _ = redact_conversation(c)
    assert [t.text for t in red.turns] == ["Hi, this is the support desk.", "thanks <PERSON>, that helped"]
    assert red.turns[0].speaker == "Mina"


def test_sample_review_types():
    # wrong types seen on the sample data, checked by entity rather than text
    spans = find_pii("my current number is the one on this account, (206) 555-0117")
    assert [(s.entity, s.text) for s in spans] == [("PHONE", "(206) 555-0117")]
    c = conv(("Agent", "And the last four digits of the SSN on the account?"), ("Customer", "219-09-9999"))
    assert [(s.entity, s.text) for s in redact_conversation(c)[1]] == [("SSN", "219-09-9999")]
    c = conv(("Agent", "What's your member number?"),
             ("Customer", "it's uh six two oh oh one hold on it's on the card six two oh oh one four four"))
    assert {s.entity for s in redact_conversation(c)[1]} == {"ACCOUNT_NUMBER"}
