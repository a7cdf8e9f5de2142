"""Time to answer the four core tasks about one conversation: naive vs batched vs chained with cache.

Runs the real default model (SmolLM2-135M-Instruct, fp32 on CPU) through
``convtune.evaluation.evaluate`` (the code ``convtune evaluate`` runs) on the
first N conversations of the test set, with every answering strategy:

* naive: one prompt per (conversation, task), one at a time, each computing the
  whole transcript (the "one example per task" rendering);
* independent, batched across conversations (left padding);
* independent with the transcript prefix cached once per conversation;
* chained (tasks as follow-up turns in one chat, the model's own answers kept),
  without and with the KV cache, one conversation at a time and batched;
* chained with cache and constrained intent (label log-likelihood scoring).

Prints a table and writes ``benchmarks/results/multitask_inference.json``.
Greedy outputs of equivalent runs (cached vs recomputed, batched vs single)
are compared token for token.

    HF_HUB_OFFLINE=1 python benchmarks/multitask_inference.py [--n 5] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = [
    # name, strategy, reuse_cache, batch_size, constrained
    ("naive (independent, 1 prompt/task)", "independent", False, 1, False),
    ("independent, batched", "independent", False, 5, False),
    ("independent, shared prefix cache", "independent", True, 1, False),
    ("chained, no cache", "chained", False, 1, False),
    ("chained, cache", "chained", True, 1, False),
    ("chained, cache, batched", "chained", True, 5, False),
    ("chained, cache, constrained intent", "chained", True, 1, ["intent"]),
]
# Pairs whose greedy outputs must be identical (same prompts, different computation).
SAME_OUTPUTS = [
    ("naive (independent, 1 prompt/task)", "independent, batched"),
    ("naive (independent, 1 prompt/task)", "independent, shared prefix cache"),
    ("chained, no cache", "chained, cache"),
    ("chained, no cache", "chained, cache, batched"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "data" / "test.jsonl")
    ap.add_argument("--n", type=int, default=5, help="conversations")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multitask_inference.json")
    ap.add_argument("--only", nargs="*", help="run only these config names")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of every config, interleaved; the fastest counts (shared CPUs are noisy)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on shared CPUs, 2 threads stall whenever another "
                    "process holds a core, and timings vary 10x)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from convtune.data import load_conversations
    from convtune.evaluation import evaluate, load_for_eval, resolve_tasks

    convs = load_conversations(args.data)[1][: args.n]
    t0 = time.perf_counter()
    loaded = load_for_eval(args.model, device="cpu")
    load_s = time.perf_counter() - t0
    tasks = resolve_tasks(None)  # the four core tasks
    # Warm-up (first forward passes allocate and pick kernels).
    evaluate(loaded, convs[:1], tasks[:1], max_new_tokens={"text": 4})

    configs = [c for c in CONFIGS if not args.only or c[0] in args.only]
    runs: dict[str, list] = {c[0]: [] for c in configs}
    for round_ in range(args.rounds):
        for name, strategy, reuse, bs, constrained in configs:
            c0 = time.process_time()
            r = evaluate(loaded, convs, tasks, name=name, strategy=strategy, reuse_cache=reuse, batch_size=bs,
                         constrained=constrained)
            runs[name].append((r, time.process_time() - c0))
            print(f"  round {round_ + 1}: {name}: {r.seconds / len(convs):.2f} s/conversation",
                  file=sys.stderr, flush=True)

    rows, results = [], {}
    for name, strategy, reuse, bs, constrained in configs:
        r, cpu = min(runs[name], key=lambda x: x[0].seconds)
        results[name] = r
        lat = {t: v.latency for t, v in r.tasks.items()}
        row = {
            "config": name, "strategy": strategy, "reuse_cache": reuse, "batch_size": bs,
            "constrained": constrained or [],
            "seconds_total": round(r.seconds, 2),
            "seconds_per_conversation": round(r.seconds / len(convs), 2),
            "all_rounds_seconds_per_conversation": [round(x.seconds / len(convs), 2) for x, _ in runs[name]],
            "cpu_seconds_per_conversation": round(cpu / len(convs), 2),
            "prompt_tokens_per_conversation": round(sum(v["prompt_tokens_per_item"] * v["n"]
                                                        for v in lat.values()) / len(convs), 1),
            "computed_prompt_tokens_per_conversation": round(sum(v["computed_prompt_tokens_per_item"] * v["n"]
                                                                 for v in lat.values()) / len(convs), 1),
            "new_tokens_per_conversation": round(sum(v["new_tokens_per_item"] * v["n"]
                                                     for v in lat.values()) / len(convs), 1),
            "prefill_seconds_per_conversation": round(sum(v["prefill_seconds_per_item"] * v["n"]
                                                          for v in lat.values()) / len(convs), 2),
            "decode_seconds_per_conversation": round(sum(v["decode_seconds_per_item"] * v["n"]
                                                         for v in lat.values()) / len(convs), 2),
            "per_task": {t: {"seconds_per_item": round(v["seconds_per_item"], 3),
                             "new_tokens_per_item": round(v["new_tokens_per_item"], 1),
                             "new_tokens_per_s": round(v["new_tokens_per_s"], 1),
                             "prefill_tokens_per_s": round(v["prefill_tokens_per_s"], 1)}
                         for t, v in lat.items()},
            "metrics": {t: {"primary": v.primary_metric, "value": v.metrics.get(v.primary_metric),
                            "parse_failure_rate": v.metrics["parse_failure_rate"]}
                        for t, v in r.tasks.items()},
        }
        rows.append(row)

    def outputs(r):
        return {(x["conversation_id"], x["task"]): x["output"] for x in r.records}

    identical = {}
    for a, b in SAME_OUTPUTS:
        if a in results and b in results:
            oa, ob = outputs(results[a]), outputs(results[b])
            identical[f"{a} == {b}"] = f"{sum(oa[k] == ob.get(k) for k in oa)}/{len(oa)}"

    naive = next((r["seconds_per_conversation"] for r in rows if r["config"].startswith("naive")), None)
    header = (f"{'config':<38} {'s/conv':>7} {'speedup':>7} {'cpu s':>6} {'prefill s':>9} {'decode s':>8} "
              f"{'prompt tok':>10} {'computed':>9} {'new tok':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = f"{naive / r['seconds_per_conversation']:.2f}x" if naive else "-"
        print(f"{r['config']:<38} {r['seconds_per_conversation']:>7.2f} {speed:>7} "
              f"{r['cpu_seconds_per_conversation']:>6.1f} "
              f"{r['prefill_seconds_per_conversation']:>9.2f} {r['decode_seconds_per_conversation']:>8.2f} "
              f"{r['prompt_tokens_per_conversation']:>10.0f} "
              f"{r['computed_prompt_tokens_per_conversation']:>9.0f} "
              f"{r['new_tokens_per_conversation']:>8.0f}")
    print("identical greedy outputs: " + "; ".join(f"{k}: {v}" for k, v in identical.items()))

    payload = {
        "model": args.model, "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT)
                                           else args.data),
        "conversations": [c.id for c in convs], "tasks": [t.name for t in tasks],
        "max_new_tokens": next(iter(results.values())).settings["max_new_tokens"] if results else {},
        "device": "cpu", "dtype": "float32", "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "model_load_seconds": round(load_s, 2), "rounds": args.rounds,
        "note": "s/conv = wall seconds per conversation for all tasks (fastest round); cpu s = process CPU "
                "seconds; the CPUs are shared, so wall times are noisy",
        "results": rows, "identical_outputs": identical,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
