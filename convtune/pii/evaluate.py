"""Score the PII redactor against a labelled corpus (``benchmarks/pii_corpus.jsonl``).

Corpus lines are ``{"id", "turns": [{"speaker", "text"}], "note"}`` where
turn texts carry inline markup, so offsets are computed rather than typed:

* ``[[SSN:078-05-1120]]`` -- one gold instance;
* ``[[CREDIT_CARD#g1:four one one one]] ... [[CREDIT_CARD#g1:one one ...]]`` --
  one instance made of several parts (same group id, possibly across turns);
* ``[[NEG:$45.99]]`` -- a hard negative: not PII, kept so that precision is
  measured on the things a redactor is most tempted to over-redact.

Scoring: an instance is recalled when every part is covered (>= 90% of its
characters) by predicted spans of the same type. Precision counts predicted
spans that overlap a gold part of the same type.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from convtune.conversation import Conversation, Turn, guess_role
from convtune.errors import DataValidationError, Problem
from convtune.pii.entities import ENTITY_TYPES, PiiSpan

COVERAGE = 0.90
NEGATIVE = "NEG"
_MARKUP = re.compile(r"\[\[([A-Z_]+)(?:#([A-Za-z0-9_-]+))?:(.+?)\]\]")


@dataclass(frozen=True)
class GoldPart:
    turn_index: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class GoldInstance:
    conversation_id: str
    entity: str
    parts: tuple[GoldPart, ...]

    @property
    def split_across_turns(self) -> bool:
        return len({p.turn_index for p in self.parts}) > 1


@dataclass
class CorpusItem:
    conversation: Conversation
    instances: list[GoldInstance]
    negatives: list[GoldPart]
    note: str = ""


def parse_markup(text: str) -> tuple[str, list[tuple[str, str | None, int, int]]]:
    """Strip inline markup; return clean text and ``(type, group, start, end)`` tuples."""
    out: list[str] = []
    marks: list[tuple[str, str | None, int, int]] = []
    pos = 0
    length = 0
    for m in _MARKUP.finditer(text):
        out.append(text[pos:m.start()])
        length += m.start() - pos
        inner = m.group(3)
        marks.append((m.group(1), m.group(2), length, length + len(inner)))
        out.append(inner)
        length += len(inner)
        pos = m.end()
    out.append(text[pos:])
    clean = "".join(out)
    if "[[" in clean or "]]" in clean:
        raise ValueError(f"unbalanced markup in {text!r}")
    return clean, marks


def parse_corpus_line(obj: dict) -> CorpusItem:
    cid = str(obj["id"])
    turns: list[Turn] = []
    groups: dict[tuple[str, str], list[GoldPart]] = defaultdict(list)
    singles: list[GoldInstance] = []
    negatives: list[GoldPart] = []
    for i, t in enumerate(obj["turns"]):
        clean, marks = parse_markup(t["text"])
        speaker = t["speaker"]
        turns.append(Turn(id=f"t{i}", speaker=speaker, role=guess_role(speaker), text=clean))
        for etype, group, s, e in marks:
            part = GoldPart(i, s, e, clean[s:e])
            if etype == NEGATIVE:
                negatives.append(part)
            elif etype not in ENTITY_TYPES:
                raise ValueError(f"unknown entity type {etype!r}")
            elif group is None:
                singles.append(GoldInstance(cid, etype, (part,)))
            else:
                groups[(etype, group)].append(part)
    grouped = [GoldInstance(cid, et, tuple(parts)) for (et, _), parts in groups.items()]
    conv = Conversation(id=cid, turns=turns)
    return CorpusItem(conv, singles + grouped, negatives, str(obj.get("note", "")))


def load_corpus(path: str | Path) -> list[CorpusItem]:
    """Parse the corpus; every malformed line is reported at once."""
    items: list[CorpusItem] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(parse_corpus_line(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(Problem(str(path), lineno, None, str(exc)))
    if problems:
        raise DataValidationError(problems)
    return items


@dataclass(frozen=True)
class TypeScore:
    entity: str
    support: int       # gold instances
    tp: int            # gold instances recalled
    fn: int
    predicted: int     # predicted spans of this type
    fp: int            # predicted spans overlapping no gold part of this type

    @property
    def recall(self) -> float:
        return self.tp / self.support if self.support else 1.0

    @property
    def precision(self) -> float:
        return (self.predicted - self.fp) / self.predicted if self.predicted else 1.0


@dataclass
class PiiReport:
    scores: dict[str, TypeScore]
    negatives: int = 0
    negatives_hit: int = 0
    missed: list[GoldInstance] = field(default_factory=list)
    false_positives: list[tuple[str, PiiSpan]] = field(default_factory=list)

    @property
    def micro(self) -> TypeScore:
        s = self.scores.values()
        return TypeScore("ALL", sum(x.support for x in s), sum(x.tp for x in s), sum(x.fn for x in s),
                         sum(x.predicted for x in s), sum(x.fp for x in s))

    def format_table(self) -> str:
        header = ("entity", "support", "tp", "fn", "pred", "fp", "recall", "precision")
        rows = [header]
        for sc in [*self.scores.values(), self.micro]:
            rows.append((sc.entity, str(sc.support), str(sc.tp), str(sc.fn), str(sc.predicted),
                         str(sc.fp), f"{sc.recall:.3f}", f"{sc.precision:.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for n, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  ".join(cells))
            if n == 0 or n == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"hard negatives redacted: {self.negatives_hit}/{self.negatives}")
        return "\n".join(lines)


def _covered(part: GoldPart, spans: list[PiiSpan]) -> bool:
    covered = set()
    for sp in spans:
        lo, hi = max(part.start, sp.start), min(part.end, sp.end)
        covered.update(range(lo, hi))
    # Whitespace inside the part is not evidence either way.
    need = [i for i in range(part.start, part.end) if not part.text[i - part.start].isspace()]
    return bool(need) and sum(1 for i in need if i in covered) >= COVERAGE * len(need)


def _overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    return a_start < b_end and b_start < a_end


def evaluate(items: list[CorpusItem]) -> PiiReport:
    from convtune.pii.redact import redact_conversation

    support: dict[str, int] = defaultdict(int)
    tp: dict[str, int] = defaultdict(int)
    predicted: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    report = PiiReport(scores={})
    for item in items:
        _, spans = redact_conversation(item.conversation)
        by_turn_type: dict[tuple[int, str], list[PiiSpan]] = defaultdict(list)
        for sp in spans:
            by_turn_type[(sp.turn_index, sp.entity)].append(sp)
        for inst in item.instances:
            support[inst.entity] += 1
            if all(_covered(p, by_turn_type[(p.turn_index, inst.entity)]) for p in inst.parts):
                tp[inst.entity] += 1
            else:
                report.missed.append(inst)
        for sp in spans:
            predicted[sp.entity] += 1
            hit = any(inst.entity == sp.entity and _overlaps(sp.start, sp.end, p.start, p.end)
                      for inst in item.instances for p in inst.parts if p.turn_index == sp.turn_index)
            if not hit:
                fp[sp.entity] += 1
                report.false_positives.append((item.conversation.id, sp))
        for neg in item.negatives:
            report.negatives += 1
            if any(sp.turn_index == neg.turn_index and _overlaps(sp.start, sp.end, neg.start, neg.end)
                   for sp in spans):
                report.negatives_hit += 1
    for et in ENTITY_TYPES:
        report.scores[et] = TypeScore(et, support[et], tp[et], support[et] - tp[et], predicted[et], fp[et])
    return report


def evaluate_corpus(path: str | Path) -> PiiReport:
    return evaluate(load_corpus(path))


def main(corpus_path: str | Path = "benchmarks/pii_corpus.jsonl", *, verbose: bool = False) -> int:
    """Print the per-type table; exit status 1 when a recall gate fails."""
    report = evaluate_corpus(corpus_path)
    print(report.format_table())
    if verbose:
        for inst in report.missed:
            print(f"MISS {inst.entity:15} {inst.conversation_id}: {' | '.join(p.text for p in inst.parts)}")
        for cid, sp in report.false_positives:
            print(f"FP   {sp.entity:15} {cid}: {sp.text}")
    failed = gate_failures(report)
    for line in failed:
        print(line)
    return 1 if failed else 0


# The acceptance floors (issues 3 and 16), on every corpus; tests/test_pii.py enforces the same numbers.
RECALL_GATES = {"CREDIT_CARD": 0.99, "SSN": 0.99, "PHONE": 0.95, "EMAIL": 0.95,
                "PERSON": 0.90, "ADDRESS": 0.85}
PRECISION_FLOOR = 0.95
CORPORA = ("benchmarks/pii_corpus.jsonl", "benchmarks/pii_corpus_intl.jsonl")


def gate_failures(report: PiiReport) -> list[str]:
    """Every recall gate and precision floor ``report`` misses, as printable lines."""
    out = [f"recall gate failed: {et} {report.scores[et].recall:.3f} < {floor}"
           for et, floor in RECALL_GATES.items() if report.scores[et].recall < floor]
    out += [f"precision floor failed: {et} {sc.precision:.3f} < {PRECISION_FLOOR}"
            for et, sc in report.scores.items() if sc.precision < PRECISION_FLOOR]
    return out


def side_by_side(reports: dict[str, PiiReport]) -> str:
    """One table, one column group (support, recall, precision) per corpus."""
    names = list(reports)
    header = ["entity"] + [f"{n} {c}" for n in names for c in ("n", "recall", "precision")]
    rows = [header]
    for et in [*ENTITY_TYPES, "ALL"]:
        row = [et]
        for n in names:
            sc = reports[n].micro if et == "ALL" else reports[n].scores[et]
            row += [str(sc.support), f"{sc.recall:.3f}", f"{sc.precision:.3f}"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("hard negatives redacted: " + ", ".join(
        f"{n} {r.negatives_hit}/{r.negatives}" for n, r in reports.items()))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main(*(sys.argv[1:2] or ["benchmarks/pii_corpus.jsonl"]), verbose="-v" in sys.argv))
