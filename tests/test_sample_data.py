"""The shipped sample company data meets the promises made about it in examples/data/README.md."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from convtune.data import load_conversations

from .conftest import EXAMPLES

INTENTS = {
    "billing_dispute", "payment_arrangement", "cancel_service", "upgrade_or_new_service", "technical_issue",
    "account_access", "update_account_info", "order_status", "return_or_refund", "fraud_or_security",
    "claim_new", "claim_status", "booking_new", "booking_change", "product_inquiry", "complaint",
}
SENTIMENTS = {"negative", "neutral", "positive"}


@pytest.fixture(scope="module")
def splits():
    return {s: load_conversations(EXAMPLES / f"{s}.jsonl")[1] for s in ("train", "test")}


def test_sizes_and_split(splits):
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) >= 120 and len(test) >= 30
    assert not {c.id for c in train} & {c.id for c in test}
    assert len({c.metadata.industry for c in train + test}) >= 5
    assert all(6 <= len(c.turns) <= 40 for c in train + test)


def test_labels_complete_and_valid(splits):
    convs = splits["train"] + splits["test"]
    used = Counter()
    for c in convs:
        lab = c.labels
        assert isinstance(lab["summary"], str) and lab["summary"].strip(), c.id
        assert lab["intent"] in INTENTS, c.id
        used[lab["intent"]] += 1
        assert set(lab["sentiment"]) == {"overall", "start", "end"}, c.id
        assert set(lab["sentiment"].values()) <= SENTIMENTS, c.id
        for item in lab["action_items"]:
            assert item["text"] and item["assignee"], c.id
            if item["due"] is not None:
                assert dt.date.fromisoformat(item["due"]) >= c.metadata.date, c.id
    assert 12 <= len(used) <= 20
    assert sum(not c.labels["action_items"] for c in convs) >= 10  # calls with no action items


def test_hard_cases_present(splits):
    tags = Counter(t for c in splits["train"] + splits["test"] for t in c.metadata.tags)
    for tag in ("escalation", "sarcasm", "multi_intent", "asr_noise", "pii", "unresolved"):
        assert tags[tag] >= 4, tag


def test_calls_are_timed_and_chats_are_not(splits):
    for c in splits["train"] + splits["test"]:
        assert c.timed == (c.metadata.channel == "call"), c.id
