"""The `convtune` CLI: every verb works on the shipped examples; mistakes are one line, no traceback."""

from __future__ import annotations

import json

import pytest

from convtune.cli import EXIT_DATA_INVALID, EXIT_USER_ERROR, main
from convtune.conversation import Conversation

from .conftest import EXAMPLES, ROOT

FORMATS_DIR = EXAMPLES / "formats"

# (file, extra CLI args, expected conversations, expected turns)
IMPORTS = [
    ("calls.openai.jsonl", ["--format", "openai"], 4, 20),
    ("calls.turns.csv", ["--format", "csv", "--mapping",
                         "conversation_id=call_id,text=utterance,start=start_sec,end=end_sec"], 3, 16),
    ("calls.transcripts.csv", ["--format", "csv", "--mapping", "conversation_id=call_id"], 3, 14),
    ("billing_call.txt", ["--format", "transcript"], 1, 12),
    ("dialog.person.txt", ["--format", "transcript"], 1, 9),
    ("timestamped_call.txt", ["--format", "transcript"], 1, 9),
    ("support_chat.symbl.json", ["--format", "symbl"], 1, 5),
]


@pytest.mark.parametrize("name,args,n_convs,n_turns", IMPORTS, ids=[i[0] for i in IMPORTS])
def test_import_every_format(tmp_path, capsys, name, args, n_convs, n_turns):
    out = tmp_path / "out.jsonl"
    assert main(["data", "import", str(FORMATS_DIR / name), *args, "-o", str(out)]) == 0
    convs = [Conversation.model_validate_json(line) for line in out.read_text().splitlines()]
    assert len(convs) == n_convs
    assert sum(len(c.turns) for c in convs) == n_turns
    assert f"imported {n_convs} conversations ({n_turns} turns)" in capsys.readouterr().out


def test_import_redacts_by_default_and_opt_out_is_explicit(tmp_path, capsys):
    red, raw = tmp_path / "red.jsonl", tmp_path / "raw.jsonl"
    src = str(EXAMPLES / "train.jsonl")
    assert main(["data", "import", src, "-o", str(red)]) == 0
    assert main(["data", "import", src, "-o", str(raw), "--no-redact"]) == 0
    assert "redaction is OFF" in capsys.readouterr().err
    assert "5555 5555 5555 4444" not in red.read_text() and "<CREDIT_CARD>" in red.read_text()
    assert "<CREDIT_CARD>" not in raw.read_text()


def test_corrupted_file_reports_every_problem_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    rc = main(["data", "import", str(FORMATS_DIR / "corrupted.jsonl"), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_DATA_INVALID
    assert not out.exists() and list(tmp_path.iterdir()) == []
    for line in range(2, 10):  # one or more problems on each of lines 2..9
        assert f"corrupted.jsonl:{line}" in err
    assert "[turns.1.text]: turn text is empty" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "import", "no/such/file.jsonl"],
        ["data", "validate", str(FORMATS_DIR / "calls.turns.csv"), "--mapping", "bogus=x"],
        ["analytics", str(EXAMPLES / "test.jsonl"), "--id", "no-such-id"],
        ["base-model", "prepare", "not-a-model"],
    ],
)
def test_user_mistakes_are_one_line(capsys, argv):
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("convtune: error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [[], ["data"], ["data", "import"], ["data", "validate"], ["data", "stats"],
             ["data", "pii-report"], ["analytics"], ["base-model", "prepare"], ["train"], ["evaluate"]]
)
def test_help_on_every_command(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: convtune" in capsys.readouterr().out


def test_validate_and_stats(capsys):
    assert main(["data", "validate", str(EXAMPLES / "test.jsonl")]) == 0
    assert "ok: 36 conversations" in capsys.readouterr().out
    assert main(["data", "stats", str(EXAMPLES / "train.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "conversations  96" in out and "healthcare=16" in out


def test_analytics_json_matches_hand_check(tmp_path, capsys):
    # Agent 0-4 s (8 words), Customer 3-6 s (6 words, interrupts with 1 s left), silence 6-8, Agent 8-10.
    conv = {"id": "c1", "turns": [
        {"id": "t1", "speaker": "Agent", "role": "agent", "text": "thanks for calling how can I help today",
         "start": 0, "end": 4},
        {"id": "t2", "speaker": "Customer", "role": "customer", "text": "my bill is wrong again sorry",
         "start": 3, "end": 6},
        {"id": "t3", "speaker": "Agent", "role": "agent", "text": "let me check", "start": 8, "end": 10},
    ]}
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps(conv) + "\n")
    assert main(["analytics", str(src), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert a["duration_seconds"] == 10 and a["talk_seconds"] == 8      # union [0,6] + [8,10]
    assert a["silence_seconds"] == 2 and a["overlap_seconds"] == 1     # 6-8 silent; 3-4 both talk
    assert a["interruptions"] == 1
    agent = next(s for s in a["speakers"] if s["speaker"] == "Agent")
    assert agent["talk_seconds"] == 6 and agent["words"] == 11


def test_pii_report_command(tmp_path, capsys):
    out = tmp_path / "pii.json"
    corpora = [ROOT / "benchmarks" / "pii_corpus.jsonl", ROOT / "benchmarks" / "pii_corpus_intl.jsonl"]
    assert main(["data", "pii-report", "--corpus", *map(str, corpora), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "pii_corpus recall" in header and "pii_corpus_intl recall" in header  # side by side
    assert "CREDIT_CARD" in table and "PERSON" in table
    report = json.loads(out.read_text())
    assert set(report["corpora"]) == {"pii_corpus", "pii_corpus_intl"}
    for corpus in report["corpora"].values():
        assert set(corpus["scores"]) >= {"CREDIT_CARD", "SSN", "PHONE", "EMAIL", "PERSON", "ADDRESS", "ALL"}
        assert corpus["scores"]["ALL"]["support"] >= 300
        assert corpus["gate_failures"] == []
        for entity, gate in report["recall_gates"].items():
            assert corpus["scores"][entity]["recall"] >= gate, entity
