"""Deterministic call analytics: talk time, silence, overlap, pace, interruptions.

No model is involved; every number follows from turn timestamps (or, when a
conversation is not fully timed, from word counts at an assumed speaking rate).
The output is comparable to Symbl's ``metrics``/``members`` blocks and to AWS
Transcribe Call Analytics' talk time / non-talk time / interruptions / talk speed.

Definitions (all times in seconds):

* **duration** - earliest turn start to latest turn end.
* **talk** - length of the union of all speech intervals; **silence** is
  ``duration - talk`` (so the two always add up to the duration).
* **overlap** - time during which at least two *different* speakers talk.
  A speaker's own overlapping turns (diarization noise) are merged first, so
  they count neither as overlap nor twice in that speaker's talk time.
* **speaker talk_share** - the speaker's talk time divided by the *sum* of all
  speakers' talk times. Overlap is credited to every speaker in it, so the sum
  can exceed the union; dividing by the sum keeps shares adding up to 1.
* **words_per_minute** - words / (talk seconds / 60); None when talk is 0, and
  None when untimed (it would only echo the assumed rate back).
* **interruption** - a turn of positive length that starts while another
  speaker, whose turn started strictly earlier, still has at least
  ``INTERRUPTION_MIN_REMAINING_SECONDS`` (1 s) of that turn left. The 1 s floor
  keeps ordinary turn-taking latency (a reply landing in the last words) from
  counting. Simultaneous starts are not interruptions (nobody was talking
  first). At most one per turn; it is charged to the speaker with the most
  talk left (``interruptions_received``).
* **monologue** - a run of one speaker's turns in time order, continued while
  the gap to their next turn is <= ``MONOLOGUE_GAP_SECONDS`` (2 s: a breath or
  a pause to look something up is not giving up the floor). Another speaker's
  turn ends the run unless it lies wholly inside the run so far (an overlapped
  "mm-hm" does not take the floor).
* **untimed fallback** - used unless *every* turn has timestamps (mixing real
  and invented times would give meaningless gaps). Each turn lasts
  ``words * 60 / words_per_minute`` s and turns are laid end to end, so
  silence, overlap and interruptions are 0 and ``timed=False`` marks all
  durations as estimates.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from convtune.conversation import Conversation, Role

DEFAULT_WORDS_PER_MINUTE = 150.0  # typical conversational English speaking rate
MONOLOGUE_GAP_SECONDS = 2.0
INTERRUPTION_MIN_REMAINING_SECONDS = 1.0
_EPS = 1e-9  # float slack so e.g. 3.3 - 2.3 still counts as a full 1 s

# Word characters, keeping contractions whole ("don't" is one word).
_WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*")


def count_words(text: str) -> int:
    return len(_WORD_RE.findall(text))


class SpeakerStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: str
    role: Role  # role of the speaker's first turn
    turns: int
    words: int
    talk_seconds: float
    talk_share: float  # 0-1, of the sum of all speakers' talk; 0 when nobody talked
    words_per_minute: float | None
    longest_monologue_seconds: float
    interruptions_made: int
    interruptions_received: int
    questions: int  # turns containing '?'


class CallAnalytics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    conversation_id: str
    timed: bool  # False: durations estimated from word counts
    assumed_words_per_minute: float | None  # the rate used when timed is False
    duration_seconds: float
    talk_seconds: float
    silence_seconds: float
    silence_share: float  # of duration; 0 when duration is 0
    overlap_seconds: float
    longest_silence_seconds: float
    turn_count: int
    interruptions: int
    speakers: list[SpeakerStats]  # in order of first appearance
    agent_talk_share: float | None  # summed over agent speakers; None if none
    customer_talk_share: float | None


class _Seg(NamedTuple):
    start: float
    end: float
    index: int  # position in conversation.turns (stable tie-break)
    speaker: str


def _timeline(conv: Conversation, words: list[int], wpm: float) -> tuple[list[_Seg], bool]:
    """Speech segments sorted by start, and whether they come from real timestamps."""
    if conv.timed:
        segs = [_Seg(t.start, t.end, i, t.speaker)  # type: ignore[arg-type]
                for i, t in enumerate(conv.turns)]
        return sorted(segs), True
    segs, cursor = [], 0.0
    for i, (t, n) in enumerate(zip(conv.turns, words)):
        length = n * 60.0 / wpm
        segs.append(_Seg(cursor, cursor + length, i, t.speaker))
        cursor += length
    return segs, False


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of intervals (touching ones join); input need not be sorted."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _sweep(per_speaker: dict[str, list[tuple[float, float]]]) -> tuple[list[tuple[float, float]], float]:
    """Speech union and >=2-speaker overlap in one O(n log n) sweep.

    Inputs are each speaker's merged spans, so the active count is a count of
    distinct speakers. Ends sort before starts at equal times: a reply that
    begins exactly when the previous turn ends is not overlap.
    """
    events = [(t, d) for spans in per_speaker.values() for s, e in spans if e > s
              for t, d in ((s, 1), (e, -1))]
    events.sort()  # (t, -1) < (t, 1)
    union: list[tuple[float, float]] = []
    overlap, active, prev, opened = 0.0, 0, 0.0, 0.0
    for t, d in events:
        if active >= 2:
            overlap += t - prev
        if active == 0:
            opened = t
        active += d
        if active == 0:
            union.append((opened, t))
        prev = t
    return union, overlap


def _interruptions(segs: list[_Seg]) -> list[tuple[str, str]]:
    """(interrupter, interrupted) pairs; ``segs`` sorted by start.

    Keeps each speaker's latest end among turns that started strictly earlier,
    plus the top two of those by distinct speaker, so "who else has the most
    talk left" is O(1) per turn. Ends only grow, so the top two stay correct.
    """
    latest: dict[str, float] = {}
    top: list[tuple[float, str]] = []  # at most 2, distinct speakers, descending
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(segs):
        j = i
        while j < len(segs) and segs[j].start == segs[i].start:
            j += 1
        group = segs[i:j]
        for seg in group:  # query the whole group before adding it: equal starts never interrupt
            other = next(((end, spk) for end, spk in top if spk != seg.speaker), None)
            if (seg.end > seg.start and other is not None
                    and other[0] - seg.start >= INTERRUPTION_MIN_REMAINING_SECONDS - _EPS):
                out.append((seg.speaker, other[1]))
        for seg in group:
            latest[seg.speaker] = max(latest.get(seg.speaker, seg.end), seg.end)
            top = [x for x in top if x[1] != seg.speaker] + [(latest[seg.speaker], seg.speaker)]
            top = sorted(top, reverse=True)[:2]
        i = j
    return out


def _monologues(segs: list[_Seg]) -> dict[str, float]:
    """Longest monologue per speaker; ``segs`` sorted by start (see module doc)."""
    longest: dict[str, float] = {}
    run_spk: str | None = None
    run_start = run_end = 0.0
    for seg in segs:
        if seg.speaker == run_spk and seg.start - run_end <= MONOLOGUE_GAP_SECONDS + _EPS:
            run_end = max(run_end, seg.end)
        elif run_spk is not None and seg.end <= run_end:  # start >= run_start by sort order
            longest[seg.speaker] = max(longest.get(seg.speaker, 0.0), seg.end - seg.start)
            continue  # backchannel inside the run: the floor stays with run_spk
        else:
            run_spk, run_start, run_end = seg.speaker, seg.start, seg.end
        longest[run_spk] = max(longest.get(run_spk, 0.0), run_end - run_start)
    return longest


def analyze(conversation: Conversation, *,
            words_per_minute: float = DEFAULT_WORDS_PER_MINUTE) -> CallAnalytics:
    """Compute :class:`CallAnalytics`; ``words_per_minute`` is only used when untimed."""
    if not words_per_minute > 0:  # also rejects NaN
        raise ValueError(f"words_per_minute must be positive, got {words_per_minute}")
    turns = conversation.turns
    words = [count_words(t.text) for t in turns]
    segs, timed = _timeline(conversation, words, words_per_minute)

    order = conversation.speakers
    spans: dict[str, list[tuple[float, float]]] = {s: [] for s in order}
    for seg in segs:
        spans[seg.speaker].append((seg.start, seg.end))
    merged = {s: _merge(v) for s, v in spans.items()}
    union, overlap = _sweep(merged)

    first, last = min(s.start for s in segs), max(s.end for s in segs)
    duration = last - first
    talk = sum(e - s for s, e in union)
    silence = max(0.0, duration - talk)  # clamp float noise
    # Gaps inside [first, last]; zero-length turns are no speech, so they neither
    # split a silence nor shorten it.
    edges = [first] + [x for s, e in union for x in (s, e)] + [last]
    longest_silence = max((edges[k + 1] - edges[k] for k in range(0, len(edges), 2)), default=0.0)

    pairs = _interruptions(segs) if timed else []
    made = {s: 0 for s in order}
    received = {s: 0 for s in order}
    for who, whom in pairs:
        made[who] += 1
        received[whom] += 1
    mono = _monologues(segs)

    spk_talk = {s: sum(e - b for b, e in merged[s]) for s in order}
    total = sum(spk_talk.values())
    turn_idx: dict[str, list[int]] = {s: [] for s in order}  # one pass, not one scan per speaker
    for i, t in enumerate(turns):
        turn_idx[t.speaker].append(i)
    stats = []
    for s in order:
        mine = turn_idx[s]
        n_words = sum(words[i] for i in mine)
        secs = spk_talk[s]
        stats.append(SpeakerStats(
            speaker=s,
            role=turns[mine[0]].role,
            turns=len(mine),
            words=n_words,
            talk_seconds=secs,
            talk_share=secs / total if total > 0 else 0.0,
            words_per_minute=n_words / (secs / 60.0) if timed and secs > 0 else None,
            longest_monologue_seconds=mono.get(s, 0.0),
            interruptions_made=made[s],
            interruptions_received=received[s],
            questions=sum("?" in turns[i].text for i in mine),
        ))

    def role_share(role: Role) -> float | None:
        members = [st for st in stats if st.role == role]
        return sum(st.talk_share for st in members) if members else None

    return CallAnalytics(
        conversation_id=conversation.id,
        timed=timed,
        assumed_words_per_minute=None if timed else words_per_minute,
        duration_seconds=duration,
        talk_seconds=talk,
        silence_seconds=silence,
        silence_share=silence / duration if duration > 0 else 0.0,
        overlap_seconds=overlap,
        longest_silence_seconds=longest_silence,
        turn_count=len(turns),
        interruptions=len(pairs),
        speakers=stats,
        agent_talk_share=role_share(Role.agent),
        customer_talk_share=role_share(Role.customer),
    )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_analytics(a: CallAnalytics) -> str:
    """A plain-text summary and per-speaker table for a terminal."""
    how = ("from timestamps" if a.timed
           else f"ESTIMATED from word counts at {a.assumed_words_per_minute:g} wpm")
    lines = [
        f"Call {a.conversation_id} ({how})",
        f"  duration {a.duration_seconds:.1f}s  talk {a.talk_seconds:.1f}s  silence "
        f"{a.silence_seconds:.1f}s ({_pct(a.silence_share)}, longest {a.longest_silence_seconds:.1f}s)",
        f"  overlap {a.overlap_seconds:.1f}s  turns {a.turn_count}  interruptions {a.interruptions}  "
        f"agent {_pct(a.agent_talk_share)}  customer {_pct(a.customer_talk_share)}",
        "",
    ]
    header = ("speaker", "role", "turns", "words", "talk s", "share", "wpm",
              "monologue s", "interrupts", "questions")
    rows = [header] + [
        (s.speaker, s.role.value, str(s.turns), str(s.words), f"{s.talk_seconds:.1f}", _pct(s.talk_share),
         "-" if s.words_per_minute is None else f"{s.words_per_minute:.0f}",
         f"{s.longest_monologue_seconds:.1f}", f"{s.interruptions_made}/{s.interruptions_received}",
         str(s.questions))
        for s in a.speakers
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for k, r in enumerate(rows):
        # Left-align the text columns, right-align the numbers.
        cells = [v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("(interrupts = made/received)")
    return "\n".join(lines)
