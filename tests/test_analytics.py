"""Call analytics, checked against numbers worked out by hand (arithmetic in comments)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from convtune.analytics import CallAnalytics, analyze, count_words, format_analytics
from convtune.conversation import Conversation, Role, Turn

ROLES = {"Agent": Role.agent, "Customer": Role.customer}


def turn(i: int, speaker: str, words: int, start: float | None = None, end: float | None = None,
         *, text: str | None = None) -> Turn:
    return Turn(id=f"t{i}", speaker=speaker, role=ROLES.get(speaker, Role.other),
                text=text if text is not None else " ".join(["word"] * words), start=start, end=end)


def conv(*turns: Turn) -> Conversation:
    return Conversation(id="c", turns=list(turns))


def by_speaker(a: CallAnalytics) -> dict:
    return {s.speaker: s for s in a.speakers}


def test_basic_timed_call():
    # Agent 0-10 (20 words), Customer 9-15 (12 words, cuts in with 1 s of agent left),
    # silence 15-20, Agent 20-30 (25 words).
    a = analyze(conv(turn(1, "Agent", 20, 0, 10), turn(2, "Customer", 12, 9, 15),
                     turn(3, "Agent", 25, 20, 30)))
    assert a.timed and a.assumed_words_per_minute is None
    assert a.duration_seconds == 30.0          # 0 -> 30
    assert a.talk_seconds == 25.0              # union [0,15] + [20,30] = 15 + 10
    assert a.silence_seconds == 5.0            # 30 - 25
    assert a.silence_share == pytest.approx(5 / 30)
    assert a.longest_silence_seconds == 5.0    # 15 -> 20
    assert a.overlap_seconds == 1.0            # [9,10]
    assert a.turn_count == 3
    assert a.interruptions == 1                # customer at 9, agent had 10 - 9 = 1 s >= 1 s left
    s = by_speaker(a)
    agent, cust = s["Agent"], s["Customer"]
    assert (agent.turns, agent.words, agent.talk_seconds) == (2, 45, 20.0)   # 10 + 10 s
    assert (cust.turns, cust.words, cust.talk_seconds) == (1, 12, 6.0)       # 15 - 9
    # shares divide by the sum of speaker talk, 20 + 6 = 26 (overlap credited to both)
    assert agent.talk_share == pytest.approx(20 / 26)
    assert cust.talk_share == pytest.approx(6 / 26)
    assert agent.words_per_minute == pytest.approx(135.0)  # 45 / (20/60)
    assert cust.words_per_minute == pytest.approx(120.0)   # 12 / (6/60)
    # the customer's turn (ends 15 > 10) takes the floor, so the agent's turns don't join
    assert agent.longest_monologue_seconds == 10.0
    assert cust.longest_monologue_seconds == 6.0
    assert (cust.interruptions_made, cust.interruptions_received) == (1, 0)
    assert (agent.interruptions_made, agent.interruptions_received) == (0, 1)
    assert a.agent_talk_share == pytest.approx(20 / 26)
    assert a.customer_talk_share == pytest.approx(6 / 26)


def test_late_reply_is_overlap_but_not_interruption():
    # customer starts at 9.5: agent has 0.5 s left (< 1 s) -> overlap 0.5 s, no interruption
    a = analyze(conv(turn(1, "Agent", 5, 0, 10), turn(2, "Customer", 5, 9.5, 12)))
    assert a.overlap_seconds == 0.5
    assert a.interruptions == 0
    # float slack: 3.3 - 2.3 is 0.9999999999999998 but still a full second
    b = analyze(conv(turn(1, "Agent", 5, 0, 3.3), turn(2, "Customer", 5, 2.3, 5)))
    assert b.interruptions == 1


def test_touching_turns_do_not_overlap():
    a = analyze(conv(turn(1, "Agent", 5, 0, 4), turn(2, "Customer", 5, 4, 6)))
    assert (a.overlap_seconds, a.silence_seconds, a.talk_seconds, a.interruptions) == (0.0, 0.0, 6.0, 0)


def test_simultaneous_start_and_self_overlap():
    # same start: nobody was talking first, so no interruption; overlap = [0,4] = 4 s
    a = analyze(conv(turn(1, "Agent", 5, 0, 5), turn(2, "Customer", 5, 0, 4)))
    assert (a.interruptions, a.overlap_seconds) == (0, 4.0)
    # one speaker's own overlapping turns merge: talk [0,12] = 12 s, no overlap
    b = analyze(conv(turn(1, "Agent", 5, 0, 10), turn(2, "Agent", 5, 5, 12)))
    assert (b.talk_seconds, b.overlap_seconds, b.interruptions) == (12.0, 0.0, 0)
    assert b.speakers[0].talk_seconds == 12.0 and b.speakers[0].longest_monologue_seconds == 12.0


def test_interruption_is_charged_to_another_speaker_not_self():
    # Customer 0-30; Agent 1-3 interrupts (29 s left). Customer's own 5-6 turn starts while
    # the customer is still talking, but the only *other* speaker (agent) ended at 3 -> none.
    a = analyze(conv(turn(1, "Customer", 40, 0, 30), turn(2, "Agent", 4, 1, 3),
                     turn(3, "Customer", 2, 5, 6)))
    s = by_speaker(a)
    assert a.interruptions == 1
    assert (s["Agent"].interruptions_made, s["Customer"].interruptions_received) == (1, 1)


def test_monologue_merges_short_gaps():
    # Agent 0-5, 6.5-10 (gap 1.5 <= 2), 12-15 (gap exactly 2 continues) -> one 0-15 run = 15 s;
    # Agent 18-19 (gap 3 > 2) starts a new 1 s run; Customer 20-25 = 5 s.
    a = analyze(conv(turn(1, "Agent", 5, 0, 5), turn(2, "Agent", 5, 6.5, 10),
                     turn(3, "Agent", 5, 12, 15), turn(4, "Agent", 2, 18, 19),
                     turn(5, "Customer", 5, 20, 25)))
    s = by_speaker(a)
    assert s["Agent"].longest_monologue_seconds == 15.0
    assert s["Customer"].longest_monologue_seconds == 5.0
    assert s["Agent"].talk_seconds == 5 + 3.5 + 3 + 1  # gaps are not talk: 12.5
    assert a.longest_silence_seconds == 3.0            # 15 -> 18


def test_backchannel_inside_monologue_does_not_break_it():
    # "mm-hm" at 29-29.5 lies inside the agent's run (0-30) -> agent run 0-60 = 60 s
    a = analyze(conv(turn(1, "Agent", 80, 0, 30), turn(2, "Customer", 0, 29, 29.5, text="mm-hm"),
                     turn(3, "Agent", 80, 30, 60)))
    assert by_speaker(a)["Agent"].longest_monologue_seconds == 60.0
    assert by_speaker(a)["Customer"].longest_monologue_seconds == 0.5
    # said in the pause (30.5-31, outside the run) it takes the floor: runs 30 and 28.5 -> 30
    b = analyze(conv(turn(1, "Agent", 80, 0, 30), turn(2, "Customer", 1, 30.5, 31),
                     turn(3, "Agent", 80, 31.5, 60)))
    assert by_speaker(b)["Agent"].longest_monologue_seconds == 30.0


def test_untimed_fallback_estimates_from_words():
    # 150 wpm = 2.5 words/s = 0.4 s/word, laid end to end:
    # Agent 10 w -> 4 s [0,4]; Customer 5 w -> 2 s [4,6]; Agent 15 w -> 6 s [6,12]
    a = analyze(conv(turn(1, "Agent", 10), turn(2, "Customer", 0, text="one two three four five?"),
                     turn(3, "Agent", 15)))
    assert not a.timed and a.assumed_words_per_minute == 150.0
    assert a.duration_seconds == pytest.approx(12.0)
    assert a.talk_seconds == pytest.approx(12.0)
    assert (a.silence_seconds, a.overlap_seconds, a.interruptions, a.longest_silence_seconds) == (0, 0, 0, 0)
    s = by_speaker(a)
    assert s["Agent"].talk_seconds == pytest.approx(10.0)        # 4 + 6
    assert s["Customer"].talk_seconds == pytest.approx(2.0)
    assert s["Agent"].talk_share == pytest.approx(10 / 12)
    assert s["Customer"].questions == 1
    assert s["Agent"].words_per_minute is None                   # would only echo 150
    assert s["Agent"].longest_monologue_seconds == pytest.approx(6.0)  # customer sits between
    # at 60 wpm every word is 1 s: 10 + 5 + 15 = 30 s
    b = analyze(a_conv := conv(turn(1, "Agent", 10), turn(2, "Customer", 5), turn(3, "Agent", 15)),
                words_per_minute=60)
    assert b.duration_seconds == pytest.approx(30.0)
    assert by_speaker(b)["Customer"].talk_seconds == pytest.approx(5.0)
    # consecutive agent turns merge into one monologue: 10 + 15 = 25 s
    c = analyze(conv(turn(1, "Agent", 10), turn(2, "Agent", 15)), words_per_minute=60)
    assert c.speakers[0].longest_monologue_seconds == pytest.approx(25.0)
    with pytest.raises(ValueError):
        analyze(a_conv, words_per_minute=0)


def test_partially_timed_conversation_is_estimated():
    a = analyze(conv(turn(1, "Agent", 10, 0, 100), turn(2, "Customer", 5)))
    assert not a.timed
    assert a.duration_seconds == pytest.approx(6.0)  # (10 + 5) words * 0.4 s


def test_edge_cases():
    # single turn: 30 words in 12 s = 150 wpm; no customer role present
    a = analyze(conv(turn(1, "Agent", 30, 3, 15)))
    assert (a.duration_seconds, a.talk_seconds) == (12.0, 12.0)
    assert (a.silence_seconds, a.overlap_seconds) == (0.0, 0.0)
    assert a.speakers[0].talk_share == 1.0 and a.speakers[0].words_per_minute == pytest.approx(150.0)
    assert a.agent_talk_share == 1.0 and a.customer_talk_share is None

    # zero-length turns only: nothing to divide by, everything is 0 / None
    z = analyze(conv(turn(1, "Agent", 3, 5, 5), turn(2, "Customer", 2, 5, 5)))
    assert (z.duration_seconds, z.talk_seconds, z.silence_share, z.interruptions) == (0.0, 0.0, 0.0, 0)
    assert all(s.talk_share == 0.0 and s.words_per_minute is None for s in z.speakers)

    # a zero-length turn inside a silence neither splits it nor interrupts; [0,2] .. [10,12]
    m = analyze(conv(turn(1, "Agent", 3, 0, 2), turn(2, "Customer", 1, 6, 6), turn(3, "Agent", 3, 10, 12)))
    assert (m.silence_seconds, m.longest_silence_seconds) == (8.0, 8.0)
    assert by_speaker(m)["Customer"].words_per_minute is None

    # a speaker with no words ("?" only): 0 words over 2 s of talk -> 0 wpm, 1 question
    q = analyze(conv(turn(1, "Agent", 4, 0, 2), turn(2, "Customer", 0, 3, 5, text="?")))
    cust = by_speaker(q)["Customer"]
    assert (cust.words, cust.questions, cust.words_per_minute) == (0, 1, 0.0)

    # all turns overlapping: A 0-10, B 0-10, C 2-8. Union 10, overlap 10 (>= 2 speakers
    # throughout), silence 0; C interrupts at 2 (8 s left); A/B start together -> not counted.
    o = analyze(conv(turn(1, "A", 5, 0, 10), turn(2, "B", 5, 0, 10), turn(3, "C", 5, 2, 8)))
    assert (o.talk_seconds, o.overlap_seconds, o.silence_seconds, o.interruptions) == (10.0, 10.0, 0.0, 1)
    assert [s.talk_share for s in o.speakers] == pytest.approx([10 / 26, 10 / 26, 6 / 26])
    assert o.agent_talk_share is None and o.customer_talk_share is None


def test_turn_order_does_not_matter_when_timed():
    ordered = [turn(1, "Agent", 20, 0, 10), turn(2, "Customer", 12, 9, 15), turn(3, "Agent", 25, 20, 30)]
    a = analyze(conv(*ordered))
    b = analyze(conv(ordered[2], ordered[0], ordered[1]))
    assert a.model_dump(exclude={"speakers"}) == b.model_dump(exclude={"speakers"})
    assert by_speaker(a) == by_speaker(b)


def test_count_words_and_frozen_and_format():
    assert count_words("Don't worry, it's 5 o'clock!") == 5  # don't|worry|it's|5|o'clock
    assert count_words("...") == 0
    a = analyze(conv(turn(1, "Agent", 10), turn(2, "Customer", 5)))
    with pytest.raises(ValidationError):
        a.silence_seconds = 1.0  # type: ignore[misc]
    text = format_analytics(a)
    assert "ESTIMATED" in text and "Agent" in text and "Customer" in text
    timed = format_analytics(analyze(conv(turn(1, "Agent", 20, 0, 10), turn(2, "Customer", 12, 9, 15))))
    assert "from timestamps" in timed and "120" in timed  # customer wpm 12 / 0.1 min


def _grid_oracle(turns: list[tuple[str, int, int]], step: float) -> tuple[float, float]:
    """Brute force on a grid: talk = cells with >= 1 speaker, overlap = cells with >= 2."""
    lo, hi = min(s for _, s, _ in turns), max(e for _, _, e in turns)
    talk = over = 0
    for cell in range(lo, hi):
        here = {spk for spk, s, e in turns if s <= cell < e}
        talk += len(here) >= 1
        over += len(here) >= 2
    return talk * step, over * step


def test_random_timed_conversations_are_consistent():
    rng = random.Random(20240611)
    step = 0.5  # times on a half-second grid so the brute-force oracle is exact
    interrupted_any = 0
    for n in range(300):
        raw = []
        for _ in range(rng.randint(1, 10)):
            s = rng.randint(0, 80)
            raw.append((rng.choice(["Agent", "Customer", "Bot"]), s, s + rng.choice([0, 1, 2, 5, 13, 30])))
        turns = [turn(i, spk, rng.randint(1, 30), s * step, e * step, text=None if rng.random() < .9 else "?")
                 for i, (spk, s, e) in enumerate(raw)]
        a = analyze(Conversation(id=f"r{n}", turns=turns))
        assert a.timed
        assert a.talk_seconds + a.silence_seconds == pytest.approx(a.duration_seconds)
        talk, over = _grid_oracle(raw, step)
        assert a.talk_seconds == pytest.approx(talk)
        assert a.overlap_seconds == pytest.approx(over)
        assert 0 <= a.longest_silence_seconds <= a.silence_seconds + 1e-9
        assert sum(s.turns for s in a.speakers) == a.turn_count == len(turns)
        assert sum(s.interruptions_made for s in a.speakers) == a.interruptions
        # O(n^2) restatement of the definition: a positive-length turn starting while another
        # speaker's earlier-started turn has >= 1 s left
        expected = sum(1 for spk, st, en in raw if en > st and any(
            o != spk and os < st and (oe - st) * step >= 1 for o, os, oe in raw))
        assert a.interruptions == expected
        interrupted_any += expected
        assert sum(s.interruptions_received for s in a.speakers) == a.interruptions
        total = sum(s.talk_seconds for s in a.speakers)
        if total > 0:
            assert sum(s.talk_share for s in a.speakers) == pytest.approx(1.0)
        for s in a.speakers:
            assert s.longest_monologue_seconds >= max(
                (e - b for spk, b, e in raw if spk == s.speaker), default=0) * step - 1e-9
    assert interrupted_any > 50  # the sample really exercises interruptions
