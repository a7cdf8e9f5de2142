"""The convtune demo (`make demo`): sample company data -> clean, redacted conversations -> analytics.

Steps:
1. import the sample train/test splits (validate, redact PII, write convtune JSONL to runs/demo/data),
2. print dataset statistics and what redaction caught,
3. show deterministic talk-time analytics for one call.

Fine-tuning, evaluation and serving join this demo as they land.
"""

from __future__ import annotations

import sys
from pathlib import Path

from convtune.analytics import analyze, format_analytics
from convtune.data import dataset_stats, import_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
OUT = ROOT / "runs" / "demo" / "data"


def main() -> int:
    splits = {}
    for split in ("train", "test"):
        result, convs = import_file(DATA / f"{split}.jsonl", OUT / f"{split}.jsonl")
        splits[split] = (result, convs)
        found = ", ".join(f"{k}={v}" for k, v in sorted(result.redactions.items()))
        print(f"[{split}] {result.conversations} conversations, {result.turns} turns -> {result.output}")
        print(f"[{split}] PII redacted: {found}")

    print("\n== training split ==")
    print(dataset_stats(splits["train"][1]).format())

    # A call with card numbers read out digit by digit: show before/after.
    raw = {c.id: c for c in import_file(DATA / "train.jsonl", None, redact=False)[1]}
    for conv in splits["train"][1]:
        changed = [
            (before, after)
            for before, after in zip(raw[conv.id].turns, conv.turns)
            if "<CREDIT_CARD>" in after.text
        ]
        if changed:
            print(f"\n== redaction in {conv.id} ==")
            for before, after in changed[:2]:
                print(f"  before: {before.speaker}: {before.text}")
                print(f"  after:  {after.speaker}: {after.text}")
            break

    call = next(c for c in splits["test"][1] if c.timed and len(c.speakers) >= 2)
    print()
    print(format_analytics(analyze(call)))
    print(f"\ndone: redacted data in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
