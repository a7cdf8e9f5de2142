"""PII redaction at ingestion, tuned for call and chat transcripts.

Detects card numbers (Luhn), CVVs in context, SSNs, phone numbers, e-mail,
IBAN (mod-97), routing (ABA) and account numbers, dates of birth, street
addresses and person names, including numbers read out as words ("four one
one one ...", "oh" for zero) and numbers split across turns. Everything is
replaced with a typed placeholder such as ``<CREDIT_CARD>``.
"""

from convtune.pii.checksums import aba_valid, iban_valid, luhn_valid
from convtune.pii.entities import (
                                   ACCOUNT_NUMBER,
                                   ADDRESS,
                                   CREDIT_CARD,
                                   CVV,
                                   DATE_OF_BIRTH,
                                   EMAIL,
                                   ENTITY_TYPES,
                                   IBAN,
                                   PERSON,
                                   PHONE,
                                   ROUTING_NUMBER,
                                   SSN,
                                   Entity,
                                   PiiSpan,
                                   placeholder,
)
from convtune.pii.redact import find_pii, redact_conversation, redact_text
from convtune.pii.spoken import Normalized, normalize

__all__ = [
    "ACCOUNT_NUMBER", "ADDRESS", "CREDIT_CARD", "CVV", "DATE_OF_BIRTH", "EMAIL", "ENTITY_TYPES", "IBAN",
    "PERSON", "PHONE", "ROUTING_NUMBER", "SSN", "Entity", "Normalized", "PiiSpan", "aba_valid",
    "find_pii", "iban_valid", "luhn_valid", "normalize", "placeholder", "redact_conversation",
    "redact_text",
]
