"""The convtune demo (`make demo`): sample company data -> a tuned model that beats its base.

Steps:
1. import the sample train/test splits (validate, redact PII, write convtune JSONL to runs/demo/data),
2. print dataset statistics, what redaction caught, and talk-time analytics for one call,
3. fine-tune SmolLM2-135M-Instruct with LoRA on all four core tasks at once (configs/demo.yaml;
   `convtune train`, about 6 minutes on 2 CPU cores),
4. evaluate base vs tuned on held-out test conversations (`convtune evaluate`) and print the table
   (also runs/demo/eval/{metrics.json,metrics.png,predictions.jsonl}),
5. register the adapter for tenant "acme", start `convtune serve` and run the README's serving
   examples (curl chat + analyze, the `openai` client) against it, then stop the server.

Environment knobs: DEMO_EVAL_LIMIT (test conversations evaluated, default 12; 0 = all 36),
DEMO_TRAIN=0 (reuse a finished runs/demo/train), DEMO_SERVE=0 (stop after the evaluation
instead of 5. serving the adapter with `convtune serve` and running the README's curl and
`openai` client examples against it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from convtune.analytics import analyze, format_analytics
from convtune.data import dataset_stats, import_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
OUT = ROOT / "runs" / "demo" / "data"
CONFIG = ROOT / "configs" / "demo.yaml"
RUN = ROOT / "runs" / "demo" / "train"
EVAL = ROOT / "runs" / "demo" / "eval"


def banner(text: str) -> None:
    print(f"\n{'=' * 8} {text} {'=' * max(4, 70 - len(text))}", flush=True)


def prepare_data() -> None:
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
    print(f"\nredacted data in {OUT}")


def main() -> int:
    from convtune.cli import main as convtune

    t0 = time.time()
    banner("1-2. import, redact, inspect the sample data")
    prepare_data()

    banner("3. multi-task LoRA fine-tune (convtune train --config configs/demo.yaml)")
    if os.environ.get("DEMO_TRAIN", "1") != "0" or not (RUN / "metrics.json").is_file():
        rc = convtune(["train", "--config", str(CONFIG), "--out", str(RUN), "--set", "output.overwrite=true"])
        if rc:
            return rc
    else:
        print(f"DEMO_TRAIN=0: reusing {RUN}")
    trained = time.time()

    limit = int(os.environ.get("DEMO_EVAL_LIMIT", "12"))
    banner(f"4. base vs tuned on {limit or 'all'} held-out test conversations (convtune evaluate)")
    args = ["evaluate", "--run", str(RUN), "--data", str(OUT / "test.jsonl"), "--out", str(EVAL)]
    rc = convtune(args + (["--limit", str(limit)] if limit else []))
    if rc:
        return rc
    done = time.time()
    print(f"\ndemo finished in {(done - t0) / 60:.1f} min (training {(trained - t0) / 60:.1f} min incl. "
          f"data, evaluation {(done - trained) / 60:.1f} min)")
    if os.environ.get("DEMO_SERVE", "1") != "0":
        banner("5. serve the tuned adapter: the README's serving examples, exactly as written")
        sys.path.insert(0, str(ROOT / "examples"))
        import serve_examples

        res = serve_examples.run(ROOT)
        print(res.stdout)
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            return res.returncode
        print(f"served in {(time.time() - done) / 60:.1f} min")
        from serve.cli import playground_url

        print(f"\nTry it in a page: `convtune serve --port 8000`, open {playground_url('localhost', 8000)}, "
              "sign in with the key `convtune keys create --tenant acme` printed, and pick the model "
              "support-v1 (the tuned demo adapter, registered above) or the base model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
