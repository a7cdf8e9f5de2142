"""The fast CPU path's quality cost on a tuned run: `convtune evaluate` fp32 vs `--fast-cpu`.

Runs the evaluation users run twice on the same run, data and machine, one after the
other: fp32 (the reference) and the server's default fast path (4-bit weights in groups
of 32, 8-bit head, the run's LoRA unmerged on top). Reports every task's primary metric
under both, the difference, and whether it is within ``--tolerance`` (issue 15: 0.02),
plus seconds per conversation.

    make demo   # or any run directory
    HF_HUB_OFFLINE=1 python benchmarks/fast_path_eval.py --run runs/demo/train \\
        --data runs/demo/data/test.jsonl [--limit 12] [--base]

Prints a table, writes ``benchmarks/results/fast_path_eval.json``:
``{"machine", "run", "data", "n_conversations", "tolerance", "tasks": {task: {"metric",
"fp32", "fast", "delta", "within"}}, "seconds_per_conversation": {"fp32", "fast"}}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402


def evaluate(run: Path, data: Path, out: Path, *, fast: bool, limit: int | None, base: bool) -> dict:
    cmd = [sys.executable, "-m", "convtune.cli", "evaluate", "--run", str(run), "--data", str(data),
           "--out", str(out), "--no-chart", "--fast-cpu" if fast else "--no-fast-cpu",
           "--base" if base else "--no-base"]
    if limit:
        cmd += ["--limit", str(limit)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "train")
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data" / "test.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="first N conversations (make demo: 12)")
    ap.add_argument("--base", action="store_true", help="evaluate the base model too (slower)")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--work", type=Path, help="where the two evaluations write (default: next to the run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fast_path_eval.json")
    args = ap.parse_args(argv)
    if not (args.run / "adapter").is_dir():
        print(f"no training run at {args.run} (run `make demo` first, or pass --run)", file=sys.stderr)
        return 2
    work = args.work or args.run.parent / "fast_path_eval"  # both evaluations' outputs stay here
    fp32 = evaluate(args.run, args.data, work / "fp32", fast=False, limit=args.limit, base=args.base)
    fast = evaluate(args.run, args.data, work / "fast", fast=True, limit=args.limit, base=args.base)
    tasks = {}
    models = [m for m in ("tuned", "base") if fp32["models"].get(m)]
    for model in models:
        for name, t in fp32["models"][model]["tasks"].items():
            metric = t["primary_metric"]
            a = t["metrics"][metric]
            b = fast["models"][model]["tasks"][name]["metrics"][metric]
            key = name if model == "tuned" else f"{name} (base)"
            tasks[key] = {"metric": metric, "fp32": round(a, 4), "fast": round(b, 4),
                          "delta": round(b - a, 4), "within": abs(b - a) <= args.tolerance + 1e-9}
    per_conv = {"fp32": round(fp32["models"]["tuned"]["seconds_per_conversation"], 3),
                "fast": round(fast["models"]["tuned"]["seconds_per_conversation"], 3)}
    result = {"machine": machine(), "run": str(args.run), "data": str(args.data),
              "n_conversations": fp32["n_conversations"], "tolerance": args.tolerance, "tasks": tasks,
              "seconds_per_conversation": per_conv}
    print(f"\n{'task':<22} {'metric':<18} {'fp32':>7} {'fast':>7} {'delta':>7}  within {args.tolerance}")
    for name, t in tasks.items():
        print(f"{name:<22} {t['metric']:<18} {t['fp32']:>7.3f} {t['fast']:>7.3f} {t['delta']:>+7.3f}  "
              f"{'yes' if t['within'] else 'NO'}")
    print(f"tuned seconds per conversation: fp32 {per_conv['fp32']}, fast {per_conv['fast']} "
          f"({per_conv['fp32'] / per_conv['fast']:.2f}x); {result['n_conversations']} conversations")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
