"""Entity types and the span record shared by every PII detector."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Entity(str, Enum):
    """PII entity types. The value doubles as the placeholder tag."""

    CREDIT_CARD = "CREDIT_CARD"
    CVV = "CVV"
    SSN = "SSN"
    PHONE = "PHONE"
    EMAIL = "EMAIL"
    IBAN = "IBAN"
    ACCOUNT_NUMBER = "ACCOUNT_NUMBER"
    ROUTING_NUMBER = "ROUTING_NUMBER"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    ADDRESS = "ADDRESS"
    PERSON = "PERSON"

    def __str__(self) -> str:  # so f"{entity}" gives "SSN", not "Entity.SSN"
        return self.value

    @property
    def placeholder(self) -> str:
        return f"<{self.value}>"


CREDIT_CARD = Entity.CREDIT_CARD.value
CVV = Entity.CVV.value
SSN = Entity.SSN.value
PHONE = Entity.PHONE.value
EMAIL = Entity.EMAIL.value
IBAN = Entity.IBAN.value
ACCOUNT_NUMBER = Entity.ACCOUNT_NUMBER.value
ROUTING_NUMBER = Entity.ROUTING_NUMBER.value
DATE_OF_BIRTH = Entity.DATE_OF_BIRTH.value
ADDRESS = Entity.ADDRESS.value
PERSON = Entity.PERSON.value

ENTITY_TYPES: tuple[str, ...] = tuple(e.value for e in Entity)


def placeholder(entity: str) -> str:
    """``<TYPE>`` for an entity type name."""
    return f"<{Entity(entity).value}>"


@dataclass(frozen=True)
class PiiSpan:
    """One detected PII span. Offsets index the ORIGINAL (unredacted) text.

    ``turn_index`` is the position of the turn in ``Conversation.turns`` for
    spans found by :func:`redact_conversation`, and ``None`` for free text.
    """

    turn_index: int | None
    start: int
    end: int
    entity: str
    text: str


# How sure a detector is of a candidate span; the stronger one wins where candidates overlap.
STRONG = 2
WEAK = 1
