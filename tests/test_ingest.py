"""Importers: every example file in examples/data/formats, error reports and limits."""

from __future__ import annotations

import json
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from convtune.conversation import Role
from convtune.errors import ConfigError, ConvtuneError, DataValidationError
from convtune.ingest import (FORMATS, CsvMapping, Limits, detect_format, iter_conversations,
                             read_conversations, write_conversations)

FORMATS_DIR = Path(__file__).resolve().parents[1] / "examples" / "data" / "formats"
TURNS_MAPPING = "conversation_id=call_id,text=utterance,start=start_sec,end=end_sec"


def problems_of(path, fmt=None, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        read_conversations(path, fmt, **kwargs)
    return info.value


def where(err: DataValidationError) -> set[tuple[int | None, str | None]]:
    return {(p.line, p.field) for p in err.problems}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def roles(conv) -> list[str]:
    return [t.role.value for t in conv.turns]


# --- example files ---------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("calls.openai.jsonl", "openai"), ("calls.turns.csv", "csv"),
    ("calls.transcripts.csv", "csv"), ("billing_call.txt", "transcript"),
    ("dialog.person.txt", "transcript"), ("timestamped_call.txt", "transcript"),
    ("support_chat.symbl.json", "symbl"), ("corrupted.jsonl", "convtune"),
])
def test_detect_format_of_examples(name, fmt):
    assert detect_format(FORMATS_DIR / name) == fmt


def test_openai_example():
    convs = read_conversations(FORMATS_DIR / "calls.openai.jsonl")
    assert [c.id for c in convs] == ["chat-1042", "line-2", "chat-1044", "line-4"]
    assert [len(c.turns) for c in convs] == [7, 4, 5, 4]
    first = convs[0]
    assert first.speakers == ["Customer", "Agent"]
    assert roles(first)[:3] == ["customer", "agent", "customer"]
    assert first.turns[0].text.startswith("hi, my bill went from $45 to $83")
    assert first.metadata.model_extra["system_prompt"].startswith("You are a support agent for "
                                                                  "Northwind Mobile.")
    # Two system messages are joined; none become turns.
    assert convs[1].metadata.model_extra["system_prompt"] == (
        "You help customers of Brightline Home Goods track orders.\n\n"
        "Order numbers look like BHG-123456.")
    assert convs[1].turns[0].text == ("Where is my order BHG-204518? "
                                      "It was supposed to arrive Friday.")
    # An assistant "name" replaces the label but the role stays agent.
    assert convs[2].speakers == ["Customer", "Priya"]
    assert roles(convs[2]) == ["customer", "agent", "customer", "agent", "customer"]
    assert "system_prompt" not in convs[2].metadata.model_extra
    # List-of-parts content is concatenated.
    assert convs[3].turns[0].text == ("The blender I ordered arrived with a cracked jar. "
                                      "I want a refund, not a replacement.")
    assert not any(c.timed for c in convs)


def test_csv_one_row_per_turn_example():
    convs = read_conversations(FORMATS_DIR / "calls.turns.csv", mapping=TURNS_MAPPING)
    assert [c.id for c in convs] == ["CALL-7781", "CALL-7782", "CHAT-311"]
    assert [len(c.turns) for c in convs] == [7, 5, 4]
    call = convs[0]
    assert call.speakers == ["IVR", "Customer", "Agent", "Supervisor"]
    assert roles(call) == ["bot", "customer", "agent", "customer", "agent", "agent", "customer"]
    assert call.metadata.channel == "call"
    assert (call.turns[5].start, call.turns[5].end) == (71.0, 82.5)
    assert call.turns[0].text == ("Thank you for calling Northwind Mobile. In a few words, "
                                  "tell me why you're calling.")
    claim = convs[1]
    assert claim.speakers == ["Agent", "Marcus"]
    # Role column wins ("Marcus" would guess as other); the blank role cell falls back to a guess.
    assert roles(claim) == ["agent", "customer", "agent", "customer", "agent"]
    assert claim.turns[1].text == ('Sure, it\'s H-M, 5 5 0 1 9. I filed it "two weeks ago" '
                                   "and heard nothing.")
    chat = convs[2]
    assert chat.metadata.channel == "chat"
    assert not chat.timed and call.timed
    assert roles(chat) == ["customer", "bot", "customer", "bot"]


def test_csv_one_row_per_conversation_example():
    convs = read_conversations(FORMATS_DIR / "calls.transcripts.csv",
                               mapping="conversation_id=call_id")
    assert [c.id for c in convs] == ["TX-9001", "TX-9002", "TX-9003"]
    assert [len(c.turns) for c in convs] == [6, 4, 4]
    assert [(c.metadata.channel, c.metadata.industry) for c in convs] == [
        ("call", "utilities"), ("chat", "travel"), ("call", "banking")]
    assert convs[0].turns[4].text == ("Done. Your final bill will go to the email on file, "
                                      "and any deposit is refunded with it.")
    assert roles(convs[1]) == ["customer", "agent", "customer", "agent"]
    timed = convs[2]
    assert [(t.start, t.end) for t in timed.turns] == [(0.0, 4.0), (4.0, 11.0), (11.0, 19.0),
                                                       (19.0, 21.0)]  # 5 words / 2.5 = 2 s


def test_speaker_transcript_example():
    (conv,) = read_conversations(FORMATS_DIR / "billing_call.txt")
    assert conv.id == "billing_call"
    assert len(conv.turns) == 12
    assert conv.speakers == ["Agent", "Customer", "Supervisor"]
    assert roles(conv) == ["agent", "customer"] * 5 + ["agent", "customer"]
    assert conv.turns[1].text == ("Hi. Yeah. I got a bill for $212 and it's usually around sixty. "
                                  "I haven't filled a pool or anything, it's just me in the house.")
    assert conv.turns[10].speaker == "Supervisor" and conv.turns[10].role is Role.agent
    assert conv.turns[-1].text == "Okay, thank you both."
    assert not conv.timed


def test_dialogsum_transcript_example():
    (conv,) = read_conversations(FORMATS_DIR / "dialog.person.txt")
    assert conv.id == "dialog.person"
    assert len(conv.turns) == 9
    assert conv.speakers == ["#Person1#", "#Person2#"]
    assert set(roles(conv)) == {"other"}  # nothing to guess from: no positional guessing
    assert conv.turns[5].text == "Okay."


def test_timestamped_transcript_example():
    (conv,) = read_conversations(FORMATS_DIR / "timestamped_call.txt")
    assert conv.id == "timestamped_call"
    assert len(conv.turns) == 9
    assert conv.speakers == ["Agent", "Customer"]
    assert conv.timed
    hold, back, last = conv.turns[6], conv.turns[7], conv.turns[8]
    assert (hold.start, hold.end) == (35.0, 62.0)  # ends where the next turn starts
    assert back.start == 62.0  # [00:01:02]
    assert (last.start, last.end) == (71.0, 73.0)  # "Great, thank you so much." = 5 words
    assert conv.turns[5].text == ("It's Pioneer Mutual, policy P as in Peter, 7 7 4 0 2 1. "
                                  "Sorry, it might be 7 7 4 0 2 7, the photo is blurry.")


def test_symbl_example():
    (conv,) = read_conversations(FORMATS_DIR / "support_chat.symbl.json")
    assert conv.id == "support_chat"  # stem without the ".symbl" hint
    assert [t.id for t in conv.turns] == ["m-01", "m-02", "m-03", "m-04", "m-05"]
    assert conv.speakers == ["Customer", "Agent"]
    assert roles(conv) == ["customer", "agent", "customer", "agent", "customer"]
    assert [(t.start, t.end) for t in conv.turns] == [
        (0.0, 8.0), (30.5, 37.0), (51.0, 54.25), (69.0, 77.0), (159.0, 163.0)]
    assert conv.turns[3].text.startswith("Yes: Settings > Storage > Empty trash.")


def test_corrupted_example_reports_every_problem():
    err = problems_of(FORMATS_DIR / "corrupted.jsonl")
    assert {(2, None), (3, "turns"), (4, "turns.1.text"), (5, "turns.0"), (6, "id"), (7, None),
            (8, "turns.0.role"), (8, "turns.1.start"), (9, "turns.1.start")} == where(err)
    messages = {(p.line, p.field): p.message for p in err.problems}
    assert messages[(2, None)].startswith("invalid JSON")
    assert messages[(3, "turns")] == "required field is missing"
    assert messages[(4, "turns.1.text")] == "turn text is empty"
    assert messages[(5, "turns.0")] == "end (2.5) is before start (5.0)"
    assert "duplicate conversation id 'telecom-001' (first used on line 1)" in messages[(6, "id")]
    assert "'manager'" in messages[(8, "turns.0.role")]
    assert all(p.file.endswith("corrupted.jsonl") for p in err.problems)
    assert not err.truncated
    assert "corrupted.jsonl:5 [turns.0]: end (2.5) is before start (5.0)" in err.report()


# --- native JSONL ----------------------------------------------------------------------

NATIVE = ('{"id": "c1", "turns": [{"id": "t1", "speaker": "Agent", "role": "agent", '
          '"text": "Hello there."}]}')


def test_native_bom_crlf_and_blank_lines(tmp_path):
    path = write(tmp_path, "data.jsonl", "\ufeff" + NATIVE + "\r\n\r\n"
                 + NATIVE.replace('"c1"', '"c2"') + "\r\n")
    assert [c.id for c in read_conversations(path)] == ["c1", "c2"]


def test_undecodable_utf8_is_a_problem_with_its_line(tmp_path):
    bad = NATIVE.replace('"c1"', '"c2"').replace("Hello", "H\xe9llo").encode("latin-1")
    path = write(tmp_path, "data.jsonl", NATIVE.encode() + b"\n" + bad + b"\n")
    err = problems_of(path)
    assert where(err) == {(2, None)}
    assert "not valid UTF-8" in err.problems[0].message


def test_empty_file_is_a_problem(tmp_path):
    err = problems_of(write(tmp_path, "empty.jsonl", "\n\n"), "convtune")
    assert [p.message for p in err.problems] == ["no conversations found"]


def test_utf16_file_is_reported_once(tmp_path):
    path = write(tmp_path, "data.jsonl", NATIVE.encode("utf-16"))
    err = problems_of(path, "convtune")
    assert [p.message for p in err.problems] == ["file is UTF-16-encoded; convert it to UTF-8"]


def test_native_wrong_types_and_nan(tmp_path):
    lines = [
        '{"id": 7, "turns": [{"id": "t1", "speaker": "A", "text": "hi"}]}',
        '{"id": "c2", "turns": "nope"}',
        '{"id": "c3", "turns": [{"id": "t1", "speaker": "A", "text": "hi", "start": NaN, '
        '"end": 1}]}',
        '{"id": "c4", "turns": [{"id": "t1", "speaker": "A", "text": "hi", "mood": "sad"}]}',
        '"just a string"',
    ]
    err = problems_of(write(tmp_path, "x.jsonl", "\n".join(lines)), "convtune")
    assert where(err) == {(1, "id"), (2, "turns"), (3, None), (4, "turns.0.mood"), (5, None)}


# --- OpenAI ----------------------------------------------------------------------------

def test_openai_problems(tmp_path):
    lines = [
        {"messages": [{"role": "system", "content": "Be nice."}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]},
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": None, "tool_calls": []}]},
        {"conversation": []},
        {"messages": [{"role": "user", "content": "   "}]},
    ]
    path = write(tmp_path, "chat.jsonl", "\n".join(json.dumps(x) for x in lines))
    err = problems_of(path, "openai")
    assert where(err) == {(1, "messages"), (2, "messages.1.role"), (3, "messages.1.tool_calls"),
                          (3, "messages.1.content"), (4, "conversation"), (4, "messages"),
                          (5, "messages.0.content")}


# --- CSV -------------------------------------------------------------------------------

def test_csv_mapping_parse():
    mapping = CsvMapping.parse("text=utterance, speaker=who,conversation_id=call,"
                               "meta.brand=company,delimiter=tab")
    assert (mapping.text, mapping.speaker, mapping.conversation_id) == ("utterance", "who", "call")
    assert mapping.metadata == (("brand", "company"),)
    assert mapping.delimiter == "\t"


def test_csv_mapping_parse_lists_every_mistake():
    with pytest.raises(ConfigError) as info:
        CsvMapping.parse("txt=utterance,speakr=who,conversation_id,text=a,text=b")
    message = str(info.value)
    assert "unknown key 'txt' (did you mean 'text'?)" in message
    assert "unknown key 'speakr' (did you mean 'speaker'?)" in message
    assert "'conversation_id' is not key=column" in message
    assert "'text' is given twice" in message


def test_csv_mapped_column_missing_from_header():
    err = problems_of(FORMATS_DIR / "calls.turns.csv",
                      mapping="conversation_id=call_id,text=utterence")
    (problem,) = err.problems
    assert (problem.line, problem.field) == (1, "utterence")
    assert "did you mean 'utterance'?" in problem.message
    assert "'call_id', 'speaker', 'role', 'utterance'" in problem.message


def test_csv_without_mapping_says_what_to_map():
    err = problems_of(FORMATS_DIR / "calls.turns.csv")
    assert "map text=<column>" in err.problems[0].message


def test_csv_cell_problems_name_row_and_column(tmp_path):
    text = ("call,who,role,said,from,to,channel,date\n"
            "A,Agent,agent,Hello,0,1.5,call,2026-03-02\n"       # row 2: fine
            "A,Customer,boss,Hi,1.6,2,call,2026-03-02\n"        # row 3: unknown role
            "A,Agent,agent,Sure,soon,3,call,2026-03-02\n"       # row 4: bad start
            "A,Customer,customer,Ok,5,4,chat,2026-03-02\n"      # row 5: end < start, other channel
            "B,Agent,agent,,0,1,call,2026-02-30\n"              # row 6: empty text; bad date
            "B,Agent,agent,Hi\n"                                # row 7: short row
            ",Agent,agent,Hi,0,1,call,\n")                      # row 8: no conversation id
    mapping = "conversation_id=call,speaker=who,text=said,start=from,end=to"
    err = problems_of(write(tmp_path, "t.csv", text), mapping=mapping)
    assert where(err) == {(3, "role"), (4, "from"), (5, "to"), (5, "channel"), (6, "said"),
                          (6, "date"), (7, None), (8, "call")}


def test_csv_row_numbers_count_multiline_cells_as_one_row(tmp_path):
    text = ('id,transcript\n'
            'r1,"Agent: Hello.\nCustomer: Hi."\n'
            'r1,"Agent: Again."\n'
            'r3,"preamble\nAgent: Hi.\n[00:01] Bot: timed"\n')
    err = problems_of(write(tmp_path, "t.csv", text), mapping="conversation_id=id")
    assert where(err) == {(3, "id"), (4, "transcript")}
    messages = sorted(p.message for p in err.problems)
    assert messages[0].startswith("duplicate conversation id 'r1' (first used on row 2)")
    assert messages[1:] == ["transcript line 1: 1 line(s) before the first speaker label; "
                            "expected 'Speaker: text'",
                            "transcript line 2: no timestamp, but other turns have one"]


def test_csv_bom_tsv_and_metadata_columns(tmp_path):
    text = ("\ufeffconv\tspeaker\ttext\tbrand\ttags\n"
            "x1\tCaller\tMy card was declined.\tLakeside\tfraud; urgent\n"
            "x1\tRep\tLet me check that.\tLakeside\t\n")
    (conv,) = read_conversations(write(tmp_path, "t.tsv", text),
                                 mapping="conversation_id=conv,meta.company=brand")
    assert roles(conv) == ["customer", "agent"]
    assert conv.metadata.tags == ["fraud", "urgent"]
    assert conv.metadata.model_extra == {"company": "Lakeside"}


def test_csv_malformed_quoting(tmp_path):
    text = 'conversation_id,speaker,text\nc1,Agent,"never closed\n'
    err = problems_of(write(tmp_path, "t.csv", text))
    assert err.problems[0].message.startswith("malformed CSV")


# --- transcripts -------------------------------------------------------------------------

def test_transcript_timestamp_forms(tmp_path):
    text = "00:01:02 Agent: First.\n[01:10] Caller: Second one here.\n[1:01:01.5] Agent: Third.\n"
    (conv,) = read_conversations(write(tmp_path, "t.txt", text))
    assert [(t.start, t.end) for t in conv.turns] == [(62.0, 70.0), (70.0, 3661.5),
                                                      (3661.5, 3661.9)]
    assert roles(conv) == ["agent", "customer", "agent"]


def test_transcript_problems(tmp_path):
    text = ("Call log exported 2026-03-02\n"         # 1: before any speaker
            "[00:00:05] Agent: Hello.\n"            # 2
            "[00:00:09] Agent: Are you there?\n"    # 3
            "[00:00:07] Customer: Yes.\n"           # 4: earlier than the previous turn
            "[00:00:12]\n"                          # 5: stamp without speaker
            "[00:99:00] Customer: Hm.\n"            # 6: invalid stamp
            "Agent: \n")                            # 7: no stamp, and empty text
    err = problems_of(write(tmp_path, "t.txt", text))
    assert where(err) == {(1, None), (4, "timestamp"), (5, "speaker"), (6, "timestamp"),
                          (7, "timestamp"), (7, "text")}


def test_transcript_without_speakers(tmp_path):
    err = problems_of(write(tmp_path, "notes.txt", "just some notes\nno speakers\n"))
    assert where(err) == {(1, None)}


# --- Symbl --------------------------------------------------------------------------------

SYMBL_RESPONSE = {"messages": [
    {"id": "6412283618000896", "text": "Hi, I'd like to cancel my subscription.",
     "from": {"id": "u1", "name": "Caller", "userId": "c@example.com"},
     "startTime": "2026-03-02T09:30:00.000Z", "endTime": "2026-03-02T09:30:03.100Z",
     "conversationId": "5815170693595136"},
    {"id": "5988377874604032", "text": "Sure, I can help with that.",
     "from": {"id": "u2", "name": "Support"},
     "startTime": "2026-03-02T09:30:04.000Z", "endTime": "2026-03-02T09:30:06.000Z",
     "conversationId": "5815170693595136"},
]}


def test_symbl_response_form(tmp_path):
    path = write(tmp_path, "resp.json", json.dumps(SYMBL_RESPONSE))
    assert detect_format(path) == "symbl"
    (conv,) = read_conversations(path)
    assert conv.id == "5815170693595136"
    assert [t.id for t in conv.turns] == ["6412283618000896", "5988377874604032"]
    assert roles(conv) == ["customer", "agent"]
    assert [(t.start, t.end) for t in conv.turns] == [(0.0, 3.1), (4.0, 6.0)]


def test_symbl_problems_have_lines_and_paths(tmp_path):
    doc = json.loads(json.dumps(SYMBL_RESPONSE))
    doc["messages"][0]["startTime"] = "yesterday"
    doc["messages"][1]["from"] = {}
    doc["messages"].append({"id": "x", "text": "", "from": {"name": "Support"},
                            "startTime": "2026-03-02T09:29:00Z", "endTime": "2026-03-02T09:29:01Z"})
    text = json.dumps(doc, indent=2)
    err = problems_of(write(tmp_path, "resp.json", text), "symbl")
    lines = text.splitlines()
    first, second, third = (i + 1 for i, s in enumerate(lines) if s == "    {")
    assert where(err) == {(first, "messages.0.startTime"), (second, "messages.1.from.name"),
                          (third, "messages.2.text")}


def test_symbl_large_documents_fall_back_to_paths_only(tmp_path, monkeypatch):
    from convtune.ingest import symbl
    monkeypatch.setattr(symbl, "_TRACK_LINES_BELOW", 0)  # as if the document were huge
    doc = json.loads(json.dumps(SYMBL_RESPONSE))
    doc["messages"][1]["text"] = 42
    err = problems_of(write(tmp_path, "resp.json", json.dumps(doc, indent=2)), "symbl")
    assert where(err) == {(None, "messages.1.text")}


def test_symbl_negative_time_and_bad_json(tmp_path):
    doc = json.loads(json.dumps(SYMBL_RESPONSE))
    doc["messages"][1]["startTime"] = "2026-03-02T09:29:00.000Z"
    err = problems_of(write(tmp_path, "a.json", json.dumps(doc)), "symbl")
    assert where(err) == {(1, "messages.1.startTime")}
    assert "before the first message" in err.problems[0].message
    err = problems_of(write(tmp_path, "b.json", '{\n  "messages": [\n    {"text": }\n]}'), "symbl")
    assert where(err) == {(3, None)}


# --- detection, writing ---------------------------------------------------------------------

def test_detect_format_unsure(tmp_path):
    with pytest.raises(ConvtuneError, match="pass --format with one of convtune, openai"):
        detect_format(write(tmp_path, "mystery.dat", "col1;col2\n1;2\n"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConvtuneError, match="not a regular file"):
        detect_format(fifo)


def test_bad_arguments_fail_before_iteration(tmp_path):
    with pytest.raises(ConfigError):
        iter_conversations(FORMATS_DIR / "billing_call.txt", "excel")
    with pytest.raises(ConfigError):
        iter_conversations(FORMATS_DIR / "billing_call.txt", mapping="text=x")
    with pytest.raises(ConfigError):
        Limits(max_turns=0)
    assert FORMATS == ("convtune", "openai", "csv", "transcript", "symbl")


def test_write_round_trip(tmp_path):
    convs = read_conversations(FORMATS_DIR / "calls.turns.csv", mapping=TURNS_MAPPING)
    out = tmp_path / "out.jsonl"
    assert write_conversations(out, convs) == 3
    assert read_conversations(out) == convs
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        c.model_dump(mode="json") for c in convs]
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_write_leaves_nothing_when_iterator_raises(tmp_path):
    good = read_conversations(FORMATS_DIR / "calls.openai.jsonl")

    def halfway():
        yield good[0]
        yield good[1]
        raise RuntimeError("source failed")

    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        write_conversations(out, halfway())
    assert list(tmp_path.iterdir()) == []
    # An existing file is left untouched, and bad input never reaches it.
    out.write_text("previous\n")
    with pytest.raises(DataValidationError):
        write_conversations(out, iter_conversations(FORMATS_DIR / "corrupted.jsonl"))
    assert out.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [out]


# --- limits ---------------------------------------------------------------------------------

def test_file_size_limit_checked_before_reading(tmp_path):
    path = write(tmp_path, "big.jsonl", (NATIVE + "\n") * 30)
    err = problems_of(path, limits=Limits(max_file_bytes=1000))
    (problem,) = err.problems
    assert problem.line is None and "over the 1,000-byte limit" in problem.message


def test_file_size_limit_enforced_while_streaming_a_pipe(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)

    def feed():
        try:
            with open(fifo, "wb") as f:
                for i in range(200):
                    f.write((NATIVE.replace('"c1"', f'"c{i}"') + "\n").encode())
        except BrokenPipeError:
            pass  # the reader stopped at the limit, as it should

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    err = problems_of(fifo, "convtune", limits=Limits(max_file_bytes=1000))
    writer.join(timeout=10)
    (problem,) = err.problems
    assert problem.line == 1000 // (len(NATIVE) + 1) + 1  # the first line crossing 1,000 bytes
    assert "larger than the 1,000-byte limit" in problem.message


def test_long_line_is_rejected_without_loading_it(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(NATIVE.encode() + b"\n")
        f.write(b'{"id": "' + b"x" * 5_000_000 + b'"}\n')
        f.write(NATIVE.encode() + b"\n")
    tracemalloc.start()
    try:
        err = problems_of(path, limits=Limits(max_line_chars=200))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert where(err) == {(2, None)}
    assert "longer than 200 characters" in err.problems[0].message
    assert peak < 500_000  # the 5 MB line never sat in memory


def test_long_csv_line_is_reported_at_its_row(tmp_path):
    text = ('conversation_id,speaker,text\nc,Agent,"two\nlines"\nc,Agent,' + "x" * 10_000 + "\n")
    err = problems_of(write(tmp_path, "t.csv", text), limits=Limits(max_line_chars=500))
    assert where(err) == {(3, None)}
    assert err.problems[0].message.endswith("reading stopped (file line 4)")


def test_turn_limit(tmp_path):
    lines = "".join(f"{'Agent' if i % 2 else 'Customer'}: line {i}\n" for i in range(1, 8))
    err = problems_of(write(tmp_path, "long.txt", lines), limits=Limits(max_turns=5))
    assert where(err) == {(6, None)}
    assert "more than 5 turns" in err.problems[0].message

    rows = "conversation_id,speaker,text\n" + "".join(f"c,Agent,hi {i}\n" for i in range(5))
    err = problems_of(write(tmp_path, "long.csv", rows), limits=Limits(max_turns=3))
    assert where(err) == {(5, None)}

    turns = [{"id": f"t{i}", "speaker": "A", "text": "hi"} for i in range(4)]
    native = json.dumps({"id": "c", "turns": turns})
    err = problems_of(write(tmp_path, "long.jsonl", native), limits=Limits(max_turns=3))
    assert where(err) == {(1, "turns")}


def test_conversation_limit_and_problem_truncation(tmp_path):
    many = "\n".join(NATIVE.replace('"c1"', f'"c{i}"') for i in range(5))
    err = problems_of(write(tmp_path, "many.jsonl", many), limits=Limits(max_conversations=3))
    assert where(err) == {(4, None)}
    broken = "\n".join("{oops" for _ in range(10))
    err = problems_of(write(tmp_path, "broken.jsonl", broken), "convtune",
                      limits=Limits(max_problems=3))
    assert len(err.problems) == 3 and err.truncated
    assert "(report truncated)" in str(err)
