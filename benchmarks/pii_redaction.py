"""PII redaction: recall and precision on both labelled corpora, what it does to the sample
data, and its speed, for this checkout and (optionally) an earlier one, in one run.

    python benchmarks/pii_redaction.py [--before DIR]

``--before DIR`` is another checkout of convtune (``git worktree add /tmp/pii-before <commit>``):
its redactor is measured in a subprocess on the same corpora and sample data, one after the
other with this one, so the speed ratio compares like with like on a shared machine.

Measured per checkout:

* each corpus (``benchmarks/pii_corpus.jsonl``, ``benchmarks/pii_corpus_intl.jsonl``): per type
  support, recall, precision, and the hard negatives redacted;
* the sample data (``examples/data/train.jsonl`` + ``test.jsonl``): turns per second of
  ``redact_conversation`` (best of ``--repeats``), the share of whitespace tokens redacted, spans
  per type.

Prints a table, writes ``benchmarks/results/pii_redaction.json``:
``{"machine", "corpora": {name: {"after": {type: {"support", "recall", "precision"}}, "before": ...,
"negatives": {...}}}, "sample_data": {"after": {"turns", "turns_per_s", "redacted_token_share",
"spans", "lexicon": {"load_s", "memory_mb"}}, "before": ...}, "sample_data_changes": {"spans_added",
"spans_removed"}, "speed_ratio_before_over_after"}``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {"pii_corpus": ROOT / "benchmarks" / "pii_corpus.jsonl",
           "pii_corpus_intl": ROOT / "benchmarks" / "pii_corpus_intl.jsonl"}
SAMPLE = [ROOT / "examples" / "data" / "train.jsonl", ROOT / "examples" / "data" / "test.jsonl"]


def measure(repeats: int) -> dict:
    """Everything measured for the convtune importable on ``sys.path`` right now."""
    from collections import Counter

    from convtune.data import load_conversations
    from convtune.pii.evaluate import evaluate, load_corpus
    from convtune.pii.redact import redact_conversation

    lexicon = None
    try:  # the name lexicon's first load (absent in checkouts before it)
        import tracemalloc

        from convtune.pii import lexicon as lex

        start = time.perf_counter()
        lex.given_names()
        seconds = time.perf_counter() - start
        lex._lists.cache_clear()
        tracemalloc.start()
        lex.given_names()
        memory_mb = tracemalloc.get_traced_memory()[0] / 1e6
        lexicon = {"load_s": round(seconds, 3), "memory_mb": round(memory_mb, 1)}
        tracemalloc.stop()
    except ImportError:
        pass
    corpora = {}
    for name, path in CORPORA.items():
        if not path.exists():
            continue
        report = evaluate(load_corpus(path))
        corpora[name] = {
            "scores": {sc.entity: {"support": sc.support, "recall": round(sc.recall, 4),
                                   "precision": round(sc.precision, 4)}
                       for sc in [*report.scores.values(), report.micro]},
            "negatives": {"total": report.negatives, "redacted": report.negatives_hit},
            "missed": [f"{m.entity}: {' | '.join(p.text for p in m.parts)}" for m in report.missed],
            "false_positives": [f"{sp.entity}: {sp.text}" for _, sp in report.false_positives],
        }
    convs = [c for path in SAMPLE for c in load_conversations(path, None)[1]]
    turns = sum(len(c.turns) for c in convs)
    best = float("inf")
    per_conv: list[list] = []
    for _ in range(repeats):
        start = time.perf_counter()
        per_conv = [redact_conversation(c)[1] for c in convs]
        best = min(best, time.perf_counter() - start)
    spans = [sp for conv_spans in per_conv for sp in conv_spans]
    tokens = redacted = 0
    for c, conv_spans in zip(convs, per_conv):
        for i, t in enumerate(c.turns):
            covered = [(sp.start, sp.end) for sp in conv_spans if sp.turn_index == i]
            for m in re.finditer(r"\S+", t.text):
                tokens += 1
                redacted += any(s < m.end() and m.start() < e for s, e in covered)
    sample = {"conversations": len(convs), "turns": turns, "seconds": round(best, 3),
              "turns_per_s": round(turns / best, 1), "tokens": tokens, "redacted_tokens": redacted,
              "redacted_token_share": round(redacted / tokens, 5),
              "spans": dict(sorted(Counter(sp.entity for sp in spans).items())), "lexicon": lexicon,
              "span_list": sorted({f"{c.id}/{sp.turn_index} {sp.entity}: {sp.text}"
                                   for c, conv_spans in zip(convs, per_conv) for sp in conv_spans})}
    return {"corpora": corpora, "sample_data": sample}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another convtune checkout to measure first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # measure the checkout at this path
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pii_redaction.json")
    args = ap.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(args.worker))
        print(json.dumps(measure(args.repeats)))
        return 0
    runs = {}
    for label, code in (("before", args.before), ("after", ROOT)):
        if code is None:
            continue
        out = subprocess.run([sys.executable, __file__, "--worker", str(code), "--repeats",
                              str(args.repeats)],
                             check=True, capture_output=True, text=True, cwd=code)
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, write_result

    result: dict = {"machine": machine(1), "before": str(args.before) if args.before else None,
                    "corpora": {}, "sample_data": {}}
    for name in CORPORA:
        entry = {}
        for label, r in runs.items():
            if name in r["corpora"]:
                entry[label] = r["corpora"][name]
        if entry:
            result["corpora"][name] = entry
    span_lists = {label: set(r["sample_data"].pop("span_list")) for label, r in runs.items()}
    for label, r in runs.items():
        result["sample_data"][label] = r["sample_data"]
    if "before" in runs:
        # what changed on the sample data, span by span (the precision check on text nobody labelled)
        result["sample_data_changes"] = {"spans_added": sorted(span_lists["after"] - span_lists["before"]),
                                         "spans_removed": sorted(span_lists["before"] - span_lists["after"])}
        result["speed_ratio_before_over_after"] = round(
            runs["after"]["sample_data"]["seconds"] / runs["before"]["sample_data"]["seconds"], 2)

    labels = list(runs)
    for name, entry in result["corpora"].items():
        print(f"\n{name}")
        print(f"{'entity':<16}{'support':>8}"
              + "".join(f"{lab + ' R':>10}{lab + ' P':>10}" for lab in labels))
        types = entry[labels[-1]]["scores"]
        for et in types:
            row = f"{et:<16}{types[et]['support']:>8}"
            for lab in labels:
                sc = entry.get(lab, {}).get("scores", {}).get(et)
                row += f"{sc['recall']:>10.3f}{sc['precision']:>10.3f}" if sc else f"{'-':>10}{'-':>10}"
            print(row)
        print("hard negatives redacted: " + ", ".join(
            f"{lab} {entry[lab]['negatives']['redacted']}/{entry[lab]['negatives']['total']}"
            for lab in labels if lab in entry))
    print("\nsample data: " + "; ".join(
        f"{lab}: {s['turns_per_s']} turns/s, {100 * s['redacted_token_share']:.2f}% of tokens redacted, "
        f"{s['spans']}"
        for lab, s in result["sample_data"].items()))
    if "speed_ratio_before_over_after" in result:
        print(f"time after / before: {result['speed_ratio_before_over_after']}x")
    return write_result(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
