"""The task registry: round trips on the sample data, tolerant parsers, hand-computed metrics,
custom task files and registry errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convtune.conversation import Conversation
from convtune.data import load_conversations
from convtune.errors import ConfigError, DataValidationError
from tasks import (
    CORE_TASKS,
    EXTRA_TASKS,
    INTENT_LABELS,
    ClassificationTask,
    Parsed,
    StringListTask,
    TaskRegistry,
    default_registry,
    load_task_file,
)
from tasks.metrics import token_set_similarity

from .conftest import EXAMPLES, ROOT

DATA = Path(__file__).parent / "data"
OK = lambda v: Parsed(v, True)  # noqa: E731
FAIL = Parsed(None, False, "unparseable")


@pytest.fixture(scope="module")
def reg() -> TaskRegistry:
    return default_registry()


@pytest.fixture(scope="module")
def sample() -> list[Conversation]:
    return [c for s in ("train", "test") for c in load_conversations(EXAMPLES / f"{s}.jsonl")[1]]


@pytest.fixture(scope="module")
def extra() -> list[Conversation]:
    return load_conversations(DATA / "call_center_labels.jsonl")[1]


# ---- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CORE_TASKS)
def test_core_round_trip_on_all_sample_labels(reg, sample, name):
    assert len(sample) == 132
    task = reg.get(name)
    for conv in sample:
        gold = task.gold(conv)
        assert task.validate_label(gold) == [], conv.id
        back = task.parse(task.render_target(gold))
        assert back.ok and back.value == gold, conv.id


def test_sample_data_labels_check_clean(reg, sample):
    assert reg.check_labels(sample) == []
    assert all([t.name for t in reg.tasks_for(c)] == list(CORE_TASKS) for c in sample)


@pytest.mark.parametrize("name", EXTRA_TASKS)
def test_extra_round_trip(reg, extra, name):
    task = reg.get(name)
    for conv in extra:
        gold = task.gold(conv)
        back = task.parse(task.render_target(gold))
        assert back.ok and back.value == gold, conv.id
    assert reg.check_labels(extra) == []


def test_canonical_targets(reg, extra):
    conv = extra[0]
    assert reg.get("action_items").render_target(conv.labels["action_items"]) == (
        '[{"text": "Agent will reverse the duplicate $45 roaming charge", "assignee": "agent", "due": null}]')
    # key order is the schema's, whatever the gold dict's order
    shuffled = {"end": "neutral", "start": "negative", "overall": "neutral"}
    assert reg.get("sentiment").render_target(shuffled) == (
        '{"overall": "neutral", "start": "negative", "end": "neutral"}')
    assert reg.get("intent").render_target("billing_dispute") == "billing_dispute"
    assert reg.get("topics").render_target(["a", "é"]) == '["a", "é"]'
    assert reg.get("questions").render_target([]) == "[]"
    assert reg.get("summary").render_target("  Customer called.  ") == "Customer called."


def test_tasks_for_uses_present_labels(reg, extra):
    assert [t.name for t in reg.tasks_for(extra[0])] == list(CORE_TASKS + EXTRA_TASKS)
    # intent: null means "not labelled"
    assert [t.name for t in reg.tasks_for(extra[1])] == list(EXTRA_TASKS)


# ---- parser tolerance ----------------------------------------------------------------------------

ITEM = {"text": "Agent will call back", "assignee": "agent", "due": None}
ITEM_JSON = '{"text": "Agent will call back", "assignee": "agent", "due": null}'
SENT = {"overall": "negative", "start": "negative", "end": "neutral"}

TOLERATED = [
    ("intent", "billing_dispute", "billing_dispute"),
    ("intent", "Billing Dispute", "billing_dispute"),
    ("intent", "BILLING-DISPUTE.", "billing_dispute"),
    ("intent", '"order_status"', "order_status"),
    ("intent", "Intent: complaint", "complaint"),
    ("intent", "**Intent:** `Complaint`", "complaint"),
    ("intent", '{"intent": "claim_new"}', "claim_new"),
    ("intent", "```\norder_status\n```", "order_status"),
    ("intent", "The customer wants a return or refund for the blender.", "return_or_refund"),
    ("intent", "Order status\nThe customer asks where the parcel is.", "order_status"),
    ("intent", "biling_dispute", "billing_dispute"),  # fuzzy: one near label
    ("intent", "account acess", "account_access"),
    ("action_items", "[]", []),
    ("action_items", f"```json\n[{ITEM_JSON}]\n```", [ITEM]),
    ("action_items", f"Here are the action items:\n[{ITEM_JSON}]\nLet me know if you need more.", [ITEM]),
    ("action_items", f"[{ITEM_JSON}] trailing garbage ]]", [ITEM]),
    ("action_items", ITEM_JSON, [ITEM]),  # one object that is clearly an item
    ("action_items", '{"action_items": []}', []),
    ("action_items", f"Items [1]:\n[{ITEM_JSON}]", [ITEM]),
    ("action_items", '[{"Text": " Agent will call back ", "assignee": "agent", "due": "", "priority": 1}]',
     [ITEM]),
    ("action_items", '[{"text": "Customer will pay", "assignee": "customer", "due": "2026-03-06T17:00"}]',
     [{"text": "Customer will pay", "assignee": "customer", "due": "2026-03-06"}]),
    ("sentiment", '{"overall": "Negative", "Start": "NEGATIVE", "end": "neutral"}', SENT),
    ("sentiment", f"Sentiment: {json.dumps(SENT)} hope this helps", SENT),
    ("sentiment", f'```json\n{json.dumps(SENT, indent=2)}\n```', SENT),
    ("sentiment", '{\n  "overall": "negative",\n  "start": "negative",\n  "end": "neutral",\n}', SENT),
    ("action_items", f"[{ITEM_JSON},]", [ITEM]),  # trailing commas are the one repair
    ("topics", '["billing, ]", "refund"]', ["billing, ]", "refund"]),  # valid JSON is never rewritten
    ("summary", "Summary: Customer called about a bill.", "Customer called about a bill."),
    ("summary", "```\nCustomer called about a bill.\n```", "Customer called about a bill."),
    ("topics", '{"topics": ["billing", "refund"]}', ["billing", "refund"]),
    ("topics", '["billing", "  ", " refund "]', ["billing", "refund"]),
    ("entities", '[{"type": "Order Number", "text": "SW-48213"}]',
     [{"type": "order_number", "text": "SW-48213"}]),
    ("questions", '[{"text": "Why?", "answered": "yes"}]', [{"text": "Why?", "answered": True}]),
    ("follow_ups", 'Follow-ups:\n["Call the customer back"]', ["Call the customer back"]),
]


@pytest.mark.parametrize(("name", "text", "expected"), TOLERATED)
def test_parser_tolerance(reg, name, text, expected):
    got = reg.get(name).parse(text)
    assert got == Parsed(expected, True)


FAILURES = [
    ("intent", ""),
    ("intent", "refund"),  # too far from every label
    ("intent", "claim"),  # as near to claim_new as to claim_status
    ("intent", "It is a complaint, or maybe a billing dispute."),  # two labels: ambiguous
    ("intent", "The customer was happy."),
    ("action_items", "None"),
    ("action_items", "No action items."),
    ("action_items", '{"foo": 1}'),
    ("action_items", f"{ITEM_JSON}\n{ITEM_JSON}"),  # two loose objects, not one list
    ("action_items", f'[{ITEM_JSON}, {{"text": "Customer will'),  # truncated list
    ("action_items", '[{"text": "A will b", "assignee": "agent", "due": "next Friday"}]'),
    ("action_items", '[{"text": "A will b", "due": null}]'),  # no assignee
    ("action_items", "[" * 3000),
    ("sentiment", "negative"),
    ("sentiment", '{"overall": "angry", "start": "negative", "end": "neutral"}'),
    ("sentiment", '{"overall": "negative"}'),
    ("sentiment", '["negative", "negative", "neutral"]'),
    ("summary", "   "),
    ("summary", "Summary:"),
    ("topics", '"billing"'),  # a string is not a list
    ("topics", '["billing", 3]'),
    ("entities", '[{"type": "person", "text": "Angela"}]'),  # not an entity type
    ("questions", '[{"text": "Why?", "answered": "maybe"}]'),
]


@pytest.mark.parametrize(("name", "text"), FAILURES)
def test_parse_failures_are_reported(reg, name, text):
    got = reg.get(name).parse(text)
    assert not got.ok and got.value is None and got.error


@pytest.mark.parametrize("bad", [None, 42, b"[]", "\x00{[", "{" * 5000, "ß" * 10])
def test_parse_never_raises(reg, bad):
    for task in reg:
        assert isinstance(task.parse(bad), Parsed)


def test_failures_count_in_parse_failure_rate(reg):
    task = reg.get("intent")
    outputs = ["complaint", "billing_dispute or complaint", "", "Complaint"]
    scores = task.score([task.parse(o) for o in outputs], ["complaint"] * 4)
    assert scores["parse_failure_rate"] == 0.5 and scores["accuracy"] == 0.5
    for task in reg:
        assert "parse_failure_rate" in task.score([FAIL], [task.gold(_conv(task.name, _GOLD[task.name]))])


_GOLD = {"summary": "Customer called.", "action_items": [ITEM], "intent": "complaint", "sentiment": SENT,
         "topics": ["billing"], "entities": [{"type": "amount", "text": "$5"}],
         "questions": [{"text": "Why?", "answered": True}], "follow_ups": ["Call back"]}


def _conv(name, label) -> Conversation:
    turns = [{"id": "t1", "speaker": "Agent", "text": "Hi."}]
    return Conversation(id="c1", turns=turns, labels={name: label})


# ---- metrics (hand-computed) ---------------------------------------------------------------------

def test_action_items_metrics_by_hand(reg):
    task = reg.get("action_items")
    gold = [{"text": "Agent will reverse the duplicate $45 roaming charge", "assignee": "agent", "due": None},
            {"text": "Customer will check the March statement", "assignee": "customer", "due": "2026-03-09"}]
    pred = [{"text": "Agent will refund the duplicate $45 roaming charge", "assignee": "Agent",
             "due": "2026-03-03"}]
    # content words {agent, reverse|refund, duplicate, 45, roaming, charge}: 5 shared of 6+6 -> 10/12
    assert token_set_similarity(gold[0]["text"], pred[0]["text"]) == pytest.approx(10 / 12)
    s = task.score([OK(pred)], [gold])
    # TP=1: P = 1/1, R = 1/2, F1 = 2*1*0.5/1.5 = 2/3; assignee agent==Agent 1/1; due null vs date 0/1
    assert (s["precision"], s["recall"]) == (1.0, 0.5)
    assert s["f1"] == pytest.approx(2 / 3) and s["example_f1"] == pytest.approx(2 / 3)
    assert (s["assignee_accuracy"], s["due_accuracy"], s["parse_failure_rate"]) == (1.0, 0.0, 0.0)
    # + empty gold/empty prediction (perfect, adds nothing to pooled counts)
    # + a failed parse on a 1-item gold (empty prediction: pooled gold 2 -> 3; example F1 0)
    s = task.score([OK(pred), OK([]), FAIL], [gold, [], gold[:1]])
    # pooled TP=1, pred=1, gold=3: P=1, R=1/3, F1 = 2*(1/3)/(4/3) = 1/2; example F1 = (2/3+1+0)/3 = 5/9
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, pytest.approx(1 / 3), pytest.approx(0.5))
    assert s["example_f1"] == pytest.approx(5 / 9) and s["parse_failure_rate"] == pytest.approx(1 / 3)
    # a failed parse is wrong even where gold is empty
    assert task.score([FAIL], [[]])["example_f1"] == 0.0


@pytest.mark.parametrize("name", ["action_items", "topics", "entities", "questions", "follow_ups"])
def test_empty_gold_and_empty_prediction_is_perfect(reg, name):
    s = reg.get(name).score([OK([])], [[]])
    assert all(s[k] == 1.0 for k in s if k not in ("n", "parse_failure_rate")), s
    s = reg.get(name).score([OK([])], [_GOLD[name]])
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)


def test_topics_greedy_one_to_one(reg):
    # sims: g0-p0 1.0, g0-p1 {billing}/{billing,dispute} 2/3, g1-p2 {refund}/{refund,request} 2/3
    # greedy: (g0,p0) then (g1,p2); p1 stays unmatched -> P = 2/3, R = 2/2, F1 = 2*(2/3)/(5/3) = 0.8
    s = reg.get("topics").score([OK(["billing dispute", "billing", "refund request"])],
                                [["billing dispute", "refund"]])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 1.0 and s["f1"] == pytest.approx(0.8)
    assert token_set_similarity("Roaming charges", "roaming charge") == 1.0
    assert reg.get("follow_ups").score([OK(["Send a survey"])], [["Call the customer back"]])["f1"] == 0.0


def test_entities_need_the_same_type(reg):
    gold = [{"type": "amount", "text": "$45"}, {"type": "plan", "text": "Unlimited Plus"}]
    pred = [{"type": "amount", "text": "$45.00"}, {"type": "product", "text": "Unlimited Plus plan"}]
    s = reg.get("entities").score([OK(pred)], [gold])
    # {45}/{45,00}: 2/3 >= 0.6 matches; plan != product -> typed TP=1: P = R = F1 = 1/2
    # untyped: {unlimited,plus}/{unlimited,plus,plan} = 4/5 also matches -> F1 = 1
    assert (s["precision"], s["recall"], s["f1"], s["untyped_f1"]) == (0.5, 0.5, 0.5, 1.0)
    # "March 3" vs "March 5": {march,3}/{march,5} = 1/2 < 0.6: different dates do not match
    assert reg.get("entities").score([OK([{"type": "date", "text": "March 5"}])],
                                     [[{"type": "date", "text": "March 3"}]])["f1"] == 0.0


def test_questions_answered_accuracy(reg):
    gold = [{"text": "Why was I charged twice?", "answered": True},
            {"text": "Can I get a refund?", "answered": False}]
    pred = [{"text": "Can I get a refund?", "answered": True},
            {"text": "Why was I charged twice this month?", "answered": True}]
    s = reg.get("questions").score([OK(pred)], [gold])
    # both match ({why,i,charged,twice} vs +{month}: 8/9): P = R = F1 = 1; answered right 1 of 2
    assert (s["f1"], s["answered_accuracy"]) == (1.0, 0.5)


def test_macro_f1_three_classes():
    task = ClassificationTask("risk", "Risk?", ["low", "medium", "high"])
    gold = ["low", "low", "medium", "high", "high", "high"]
    pred = [OK("low"), OK("medium"), OK("medium"), OK("high"), OK("low"), FAIL]
    s = task.score(pred, gold)
    # accuracy 3/6. low: P=1/2 R=1/2 F1=1/2; medium: P=1/2 R=1/1 F1=2/3; high: P=1/1 R=1/3 F1=1/2
    # macro = (1/2 + 2/3 + 1/2) / 3 = 5/9
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx(5 / 9)
    assert s["parse_failure_rate"] == pytest.approx(1 / 6) and s["n"] == 6


def test_sentiment_metrics_by_hand(reg):
    g = [SENT, {"overall": "positive", "start": "neutral", "end": "positive"},
         {"overall": "neutral", "start": "negative", "end": "positive"},
         {"overall": "neutral", "start": "neutral", "end": "neutral"}]
    p = [OK(SENT), OK({"overall": "positive", "start": "positive", "end": "positive"}),
         OK({"overall": "negative", "start": "negative", "end": "positive"}), FAIL]
    s = reg.get("sentiment").score(p, g)
    # overall right: 1, 2 -> 2/4; trajectory (start & end) right: 1, 3 -> 2/4
    # overall F1: negative P=1/2 R=1 -> 2/3; positive 1; neutral (0 predicted, 2 gold) 0 -> macro 5/9
    assert (s["overall_accuracy"], s["trajectory_accuracy"], s["parse_failure_rate"]) == (0.5, 0.5, 0.25)
    assert s["overall_macro_f1"] == pytest.approx(5 / 9)


def test_rouge(reg):
    task = reg.get("summary")
    same = task.score([OK("The agent refunded the fee.")], ["The agent refunded the fee."])
    assert same["rouge1"] == same["rouge2"] == same["rougeL"] == pytest.approx(1.0)
    disjoint = task.score([OK("Weather is sunny today.")], ["The agent refunded the fee."])
    assert disjoint["rouge1"] == disjoint["rouge2"] == disjoint["rougeL"] == 0.0
    # gold 6 tokens, prediction "the cat sat" 3: R1 P=1 R=1/2 F=2/3; R2 P=2/2 R=2/5 F=4/7; LCS 3 -> 2/3
    part = task.score([OK("The cat sat.")], ["The cat sat on the mat."])
    assert part["rouge1"] == pytest.approx(2 / 3) and part["rouge2"] == pytest.approx(4 / 7)
    assert part["rougeL"] == pytest.approx(2 / 3)
    mixed = task.score([OK("x y"), FAIL], ["x y", "x y"])  # a failed parse scores 0
    assert mixed["rouge1"] == pytest.approx(0.5) and mixed["parse_failure_rate"] == 0.5


# ---- label validation ----------------------------------------------------------------------------

def test_validate_label_reports_problems(reg):
    assert "did you mean 'billing_dispute'" in reg.get("intent").validate_label("Billing_Dispute")[0]
    assert reg.get("intent").validate_label(None) == ["label is missing (null)"]
    problems = reg.get("action_items").validate_label([{"assignee": "agent", "due": "2026-02-30"}])
    assert problems == ["[0].text: Field required", "[0].due: day is out of range for month"]
    assert reg.get("action_items").validate_label([{**ITEM, "asignee": "x"}]) == [
        "[0].asignee: Extra inputs are not permitted"]
    assert reg.get("sentiment").validate_label({**SENT, "end": "happy"})
    assert reg.get("summary").validate_label("  ") == ["text is empty"]
    assert "personal data (CREDIT_CARD)" in reg.get("entities").validate_label(
        [{"type": "amount", "text": "4111 1111 1111 1111"}])[0]
    assert reg.get("questions").validate_label([{"text": "Why?", "answered": "yes"}])  # gold must be a bool


def test_check_labels_lists_every_problem(reg):
    conv = Conversation(id="bad-1", turns=[{"id": "t1", "speaker": "Agent", "text": "Hi."}],
                        labels={"intent": "refund", "sentimnet": SENT, "summary": " padded ",
                                "action_items": [{"text": "x", "assignee": "agent"}]})
    problems = reg.check_labels([conv], source="data.jsonl")
    text = "\n".join(map(str, problems))
    assert len(problems) == 4
    assert "data.jsonl:1 [labels.intent]: bad-1: 'refund' is not one of the 16 labels" in text
    assert "no task named 'sentimnet'" in text
    assert "[labels.summary]" in text and "changes when rendered" in text
    assert "[0].due: Field required" in text
    assert len(reg.check_labels([conv], allow_unknown=True)) == 3


# ---- registry ------------------------------------------------------------------------------------

def test_default_registry_fresh_and_configurable():
    a, b = default_registry(), default_registry(intent_labels=["sales", "support", "billing"])
    assert a.names() == list(CORE_TASKS + EXTRA_TASKS)
    assert a.get("intent") is not b.get("intent")
    assert a.get("intent").labels == INTENT_LABELS
    assert b.get("intent").labels == ("sales", "support", "billing")
    assert b.get("intent").instruction.endswith("Answer with exactly one label: sales, support, billing.")
    assert all(label in a.get("intent").instruction for label in INTENT_LABELS)
    with pytest.raises(ConfigError, match="at least 2 labels"):
        default_registry(intent_labels=["only"])
    with pytest.raises(ConfigError, match="same label"):
        default_registry(intent_labels=["Sales", "sales"])


def test_registry_errors():
    reg = default_registry()
    with pytest.raises(ConfigError, match="unknown task 'summry'; known tasks: summary, action_items, "):
        reg.get("summry")
    with pytest.raises(ConfigError, match="already registered"):
        reg.register(ClassificationTask("intent", "?", ["a", "b"]))
    reg.register(ClassificationTask("intent", "?", ["a", "b"]), replace=True)
    assert reg.get("intent").labels == ("a", "b")
    with pytest.raises(ConfigError, match="lower_snake_case"):
        reg.register(ClassificationTask("Bad Name", "?", ["a", "b"]))
    with pytest.raises(ConfigError, match="known tasks: \\(none\\)"):
        TaskRegistry().get("x")


def test_score_shape(reg):
    for task in reg:
        gold = _GOLD[task.name]
        scores = task.score([task.parse(task.render_target(gold))], [gold])
        assert scores[task.primary_metric] == pytest.approx(1.0), task.name
        assert scores["parse_failure_rate"] == 0.0 and scores["n"] == 1.0
        empty = task.score([], [])
        assert empty["n"] == 0 and all(v == 0.0 for v in empty.values()), task.name
        with pytest.raises(ValueError, match="1 predictions for 2 gold labels"):
            task.score([FAIL], [gold, gold])


def test_instructions_state_the_format(reg):
    for task in reg:
        assert task.instruction.strip() and len(task.instruction) < 700, task.name
        if task.kind == "structured":
            assert "JSON" in task.instruction, task.name
    for name in ("action_items", "entities", "questions", "follow_ups"):
        assert "[] if none" in reg.get(name).instruction


# ---- custom task files ---------------------------------------------------------------------------

def test_shipped_example_task_files():
    reg = default_registry()
    risk, = reg.register_file(ROOT / "tasks" / "examples" / "escalation_risk.yaml")
    prod, = reg.register_file(ROOT / "tasks" / "examples" / "product_mentioned.yaml")
    assert reg.names()[-2:] == ["escalation_risk", "product_mentioned"]
    assert risk.kind == "classification" and risk.labels == ("low", "medium", "high")
    assert risk.primary_metric == "macro_f1"
    assert risk.instruction.endswith("Answer with exactly one label: low, medium, high.")
    assert risk.parse("Risk: HIGH") == Parsed("high", True)
    assert isinstance(prod, StringListTask) and prod.match_threshold == 0.6
    assert prod.instruction.endswith("Answer with a JSON list of strings, [] if none.")
    label = ["Unlimited Plus", "fiber 500"]
    assert prod.parse(prod.render_target(label)) == Parsed(label, True)
    with pytest.raises(DataValidationError, match="1 problem"):  # registering twice clashes
        reg.register_file(ROOT / "tasks" / "examples" / "escalation_risk.yaml")


def test_json_task_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([
        {"name": "resolved", "type": "classification", "instruction": "Resolved?", "labels": ["yes", "no"]},
        {"name": "call_reason", "type": "text", "instruction": "Why did they call?"},
    ]))
    resolved, reason = load_task_file(path)
    assert resolved.primary_metric == "accuracy" and reason.primary_metric == "rougeL"
    assert reason.instruction == "Why did they call?"
    assert reason.parse("Reason: x") == Parsed("Reason: x", True)  # only its own name is a prefix
    assert "yes, no" in resolved.instruction and not resolved.constrained_default


def test_classification_without_label_list_in_prompt(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: topic77\ntype: classification\ninstruction: Which topic?\n"
                    "labels: [card_arrival, card_linking, exchange_rate]\n"
                    "show_labels: false\nconstrained: true\n")
    (task,) = load_task_file(path)
    assert task.instruction == "Which topic? Answer with one label."
    assert task.constrained_default and task.parse("card linking") == Parsed("card_linking", True)
    path.write_text("name: why\ntype: text\ninstruction: Why?\nconstrained: true\n")
    with pytest.raises(DataValidationError) as err:
        load_task_file(path)
    assert "only classification tasks have constrained" in err.value.report()


BAD_YAML = """\
tasks:
  - name: churn
    type: classification
    instruction: Will the customer churn?
    metric: rouge
  - name: Bad Name
    type: list
    instruction: List things.
    lables: [a, b]
  - name: score
    type: regression
    instruction: Score it.
  - name: churn
    type: text
    instruction: ""
  - name: agree
    type: classification
    instruction: Agreed?
    labels: ["Yes", "yes"]
"""


def test_task_file_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_YAML)
    reg = default_registry()
    with pytest.raises(DataValidationError) as info:
        reg.register_file(path)
    report = info.value.report()
    got = {(p.line, p.field) for p in info.value.problems}
    assert got == {
        (2, "tasks.0.labels"),  # classification without labels: at the entry's line
        (5, "tasks.0.metric"),  # rouge on a classification task
        (6, "tasks.1.name"),  # not lower_snake_case
        (9, "tasks.1.lables"),  # unknown key
        (11, "tasks.2.type"),  # unknown type
        (13, "tasks.3.name"),  # duplicate of entry 0
        (15, "tasks.3.instruction"),  # empty
        (19, "tasks.4.labels"),  # same label twice
    }, report
    expected = f"{path}:5 [tasks.0.metric]: task 'churn': 'rouge' does not apply to a classification task"
    assert expected in report
    assert "duplicate task name (also entry 0)" in report and "8 problems found" in report
    assert reg.names() == list(CORE_TASKS + EXTRA_TASKS)  # nothing registered


def test_task_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_task_file(tmp_path / "missing.yaml")
    (tmp_path / "syntax.yaml").write_text("tasks:\n  - name: x\n   type: [\n")
    with pytest.raises(DataValidationError) as info:
        load_task_file(tmp_path / "syntax.yaml")
    assert info.value.problems[0].line is not None and "invalid YAML" in info.value.problems[0].message
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(DataValidationError):
        load_task_file(tmp_path / "empty.yaml")
    (tmp_path / "clash.yaml").write_text("- {name: summary, type: text, instruction: Summarise.}\n")
    with pytest.raises(DataValidationError, match="1 problem"):
        default_registry().register_file(tmp_path / "clash.yaml")
    assert [t.name for t in load_task_file(tmp_path / "clash.yaml")] == ["summary"]


# ---- extractive baselines -------------------------------------------------------------------------

def _turns_conv(*turns: tuple[str, str, str]) -> Conversation:
    return Conversation(id="x", turns=[{"id": f"t{i}", "speaker": s, "role": r, "text": t}
                                       for i, (s, r, t) in enumerate(turns)])


def test_extractive_baselines_pick_turns():
    from tasks.extractive import (
        EXTRACTIVE_BASELINES,
        first_customer_last_agent,
        first_speaker_last_turn,
        lead_n,
        longest_turn,
    )

    conv = _turns_conv(("Agent", "agent", "Hello, Northwind."), ("Customer", "customer", "My bill is wrong."),
                 ("Agent", "agent", "I have refunded the extra $45 charge."),
                 ("Customer", "customer", "Thanks."))
    assert lead_n(conv, 1) == "Hello, Northwind."
    assert lead_n(conv, 2) == "Hello, Northwind. My bill is wrong."
    assert lead_n(conv, 9) == " ".join(t.text for t in conv.turns)
    assert longest_turn(conv) == "I have refunded the extra $45 charge."
    assert first_speaker_last_turn(conv) == "Hello, Northwind. Thanks."
    assert first_customer_last_agent(conv) == "My bill is wrong. I have refunded the extra $45 charge."
    assert list(EXTRACTIVE_BASELINES) == ["lead-1", "lead-2", "lead-3", "longest-turn",
                                          "first-speaker+last-turn", "first-customer+last-agent"]
    assert EXTRACTIVE_BASELINES["lead-3"](conv) == lead_n(conv, 3)
    assert all(isinstance(fn(conv), str) and fn(conv) for fn in EXTRACTIVE_BASELINES.values())
    # Roles missing: the first and the last turn; a turn picked twice is used once.
    plain = _turns_conv(("A", "other", "Hi, I lost my card."), ("B", "other", "It is blocked now."))
    assert first_customer_last_agent(plain) == "Hi, I lost my card. It is blocked now."
    one = _turns_conv(("Customer", "customer", "Cancel my plan."))
    assert first_speaker_last_turn(one) == first_customer_last_agent(one) == "Cancel my plan."
    with pytest.raises(ValueError):
        lead_n(one, 0)


def test_extractive_baselines_on_sample_data(sample):
    from tasks.extractive import EXTRACTIVE_BASELINES
    from tasks.metrics import faithfulness

    for conv in sample[:20]:
        source = " ".join(t.text for t in conv.turns)
        for name, fn in EXTRACTIVE_BASELINES.items():
            text = fn(conv)
            assert text and "Agent:" not in text, name
            assert faithfulness(text, source) in (None, 1.0), name  # copied turns are fully supported


# ---- faithfulness and repetition ------------------------------------------------------------------

SOURCE = ("Hi, I was charged twice for roaming, $1,200.00 in total. My order is ORD-1234, call me at 3 pm. "
          "<PERSON> here. Agent: we will refund the charges to your Visa card.")


@pytest.mark.parametrize("answer, expected", [
    ("The customer was charged twice for roaming and the agent refunded the charge to the Visa card.", 1.0),
    ("Customer <PERSON> asked about order ORD-1234 ($1200) at 3pm.", 1.0),
    ("The customer reported a double charge on the Mastercard.", 1 / 3),  # double, charge, Mastercard
    ("<EMAIL> was charged twice.", 2 / 3),  # a placeholder the source does not have
    ("Thanks, the agent will call back.", None),  # nothing checkable
])
def test_faithfulness(answer, expected):
    from tasks.metrics import faithfulness

    got = faithfulness(answer, SOURCE)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_checkable_words_definition():
    from tasks.metrics import checkable_words, unsupported_words

    words = checkable_words("Customer said the Unlimited Plus plan costs $45. Then they left, happy.")
    # numbers, capitalised non-initial words ("Plus" is common but a name here) and rare words;
    # not sentence-initial "Customer"/"Then", not common words (said, left, happy).
    assert words == ["Unlimited", "Plus", "plan", "costs", "45"]
    assert unsupported_words("Refund sent to the Mastercard.", SOURCE) == ["Mastercard"]
    # numbers written out in the transcript match digits in the answer
    said = "I can put a thirty-day hold on it, starting May first, and refund twenty-nine dollars."
    assert unsupported_words("A 30-day hold from May 1 and a $29 refund; $31 later.", said) == ["31"]


def test_repetition_rate_and_loops():
    from tasks.metrics import has_loop, repetition_rate, strip_json_keys, text_quality

    assert repetition_rate("the customer asked for a refund") == 0.0
    assert repetition_rate("a b") == 0.0
    assert repetition_rate("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc: one repeat
    assert repetition_rate("x y z w x y z", n=2) == pytest.approx(2 / 6)
    loop = "I will check that for you. " * 3
    assert has_loop(loop) and has_loop("refund " * 12) and has_loop("please hold " * 6)
    assert not has_loop("refund " * 11) and not has_loop("I will check that for you. " * 2)
    assert not has_loop("The customer asked for a refund of the roaming charge and the agent agreed.")
    items = ('[{"text": "Send the refund", "assignee": "agent", "due": null}, '
             '{"text": "Email the receipt", "assignee": "agent", "due": null}, '
             '{"text": "Call back on Monday", "assignee": "agent", "due": null}]')
    assert not has_loop(strip_json_keys(items))
    q = text_quality(["The customer was charged twice.", None, "Refund sent to the Mastercard."],
                     [SOURCE] * 3, ["The customer was charged twice.", "go on " * 10, "x"])
    assert q["faithfulness"] == pytest.approx((1.0 + 0.5) / 2)  # the failed parse is left out
    assert q["loops"] == 1.0 and 0 < q["repetition_rate"] < 1
    assert text_quality([None], ["x"], ["y"])["faithfulness"] == 1.0  # nothing checkable: 1.0
