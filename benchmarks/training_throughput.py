"""Training throughput: `convtune train` vs a plain TRL SFTTrainer baseline, same model, data and machine.

Both train the same LoRA (r=16, all linear layers, fp32 on CPU) on the same
conversations and the four core tasks, in one process, one after the other:

* convtune: the renderer's multi-task rendering (one conversation encoded once,
  every labelled task a follow-up turn, loss on the answers), batch 1 with
  gradient accumulation (no padding), exactly what ``convtune train`` runs;
* baseline: plain TRL SFTTrainer on one prompt/completion example per
  (conversation, task), TRL's default collator (pad to the longest in the
  micro-batch), 8 pairs per optimizer step like convtune, as micro-batches of
  ``--baseline-batch`` (default 2; TRL's default of 8 x ~1,000 tokens was
  killed for memory on a 24 GB machine). Same prompt text per task (the
  renderer's transcript + instruction), so only the layout differs.

Reported per trainer: (conversation, task) pairs/s, tokens/s (non-padding
tokens; padded tokens reported separately), time inside optimizer steps only
(no model loading, no saving), and model FLOPs utilisation: useful model FLOPs
per second over the measured fp32 matmul peak of this machine (best of square
torch.mm sizes, same thread count). Model FLOPs per non-padding token
= 4 x (matmul parameters) + 8 x layers x hidden x mean sequence length (LoRA:
forward + activation gradients; frozen weights get no weight gradients, the
LoRA matrices are negligible).

    HF_HUB_OFFLINE=1 python benchmarks/training_throughput.py [--convs 8] [--threads 2]

Prints a table, writes ``benchmarks/results/training_throughput.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

TASKS = ["summary", "action_items", "intent", "sentiment"]


def matmul_peak(threads: int, seconds: float = 3.0) -> dict:
    """Best fp32 GFLOP/s of square torch.mm on this CPU with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    best = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm up
        reps, t0 = 0, time.perf_counter()
        rates = []
        while time.perf_counter() - t0 < seconds / 3:
            t = time.perf_counter()
            torch.mm(a, b)
            rates.append(2 * n**3 / (time.perf_counter() - t))
            reps += 1
        best[n] = max(rates) / 1e9
    return {"gflops": round(max(best.values()), 2), "by_size": {str(k): round(v, 2) for k, v in best.items()}}


def model_flops_per_token(model_dir: Path, mean_seq: float) -> tuple[float, dict]:
    """4 x matmul parameters + 8 x layers x hidden x mean sequence length (see the module docstring)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, layers, inter = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    kv = d // c.num_attention_heads * c.num_key_value_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q, o, k, v, gate/up/down
    matmul_params = layers * per_layer + d * c.vocab_size  # + lm_head
    flops = 4 * matmul_params + 8 * layers * d * mean_seq
    return flops, {"matmul_params": matmul_params, "layers": layers, "hidden": d}


def run_convtune(args, workdir: Path, lora_dropout: float | None = None) -> dict:
    from convtune.training import load_config, train

    extra = {} if lora_dropout is None else {"lora.dropout": lora_dropout}
    cfg = load_config(flags={**extra,
        "model.name": args.model, "data.train": str(args.data), "data.limit": args.convs,
        "data.validation_fraction": 0.0, "tasks.names": TASKS,
        "train.epochs": 1, "train.batch_size": 1, "train.grad_accum": args.pairs_per_step // len(TASKS),
        "train.max_seq_len": args.max_seq_len, "train.lr": 2e-4, "train.warmup_ratio": 0.0,
        "train.eval_every": 0, "train.save_every": 10_000, "train.log_every": 1, "train.seed": 0,
        "output.dir": str(workdir / f"convtune-{lora_dropout}"),
    })
    res = train(cfg)
    m = res.metrics
    return {"pairs": m["pairs"], "tokens": m["tokens"], "padded_tokens": m["tokens"],
            "examples": res.plan["train"]["examples"],
            "step_seconds": m["train_seconds"], "steps": m["steps"], "final_loss": m["final_train_loss"]}


def baseline_rows(args) -> tuple[list[dict], int]:
    """One prompt/completion example per (conversation, task): the renderer's messages, one task each."""
    from transformers import AutoTokenizer

    from convtune.data import load_conversations
    from convtune.models import resolve_model
    from convtune.renderer import Renderer, TaskTurn
    from convtune.training.config import TrainConfig
    from tasks import default_registry

    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    budget = TrainConfig.model_validate({"train": {"max_seq_len": args.max_seq_len}}).max_transcript_tokens
    renderer = Renderer(tok, max_transcript_tokens=budget)
    reg = default_registry()
    convs = load_conversations(args.data)[1][: args.convs]
    rows = []
    for conv in convs:
        for name in TASKS:
            task = reg.get(name)
            if not task.has_label(conv):
                continue
            answer = task.render_target(task.gold(conv))
            msgs, _ = renderer.messages(conv, [TaskTurn(task.instruction, answer)])
            rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return rows, len(convs)


def run_baseline(args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from convtune.models import resolve_model
    from convtune.training.callbacks import RunCounters, ThroughputCallback

    rows, _ = baseline_rows(args)
    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    counted = {"tokens": 0, "padded": 0, "pairs": 0}

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, *a, **kw):
            counted["tokens"] += int(inputs["attention_mask"].sum())
            counted["padded"] += int(inputs["input_ids"].numel())
            counted["pairs"] += int(inputs["input_ids"].shape[0])
            return super().training_step(model, inputs, *a, **kw)

    counters = RunCounters()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(workdir / "baseline"), num_train_epochs=1,
        per_device_train_batch_size=args.baseline_batch,
        gradient_accumulation_steps=args.pairs_per_step // args.baseline_batch,
        learning_rate=2e-4, warmup_steps=0, lr_scheduler_type="cosine", max_length=args.max_seq_len,
        logging_steps=1, save_strategy="no", report_to="none", seed=0, use_cpu=True,
        bf16=False, fp16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = CountingSFTTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
        callbacks=[ThroughputCallback(counters)],
    )
    out = trainer.train()
    return {"pairs": counted["pairs"], "tokens": counted["tokens"], "padded_tokens": counted["padded"],
            "examples": len(rows), "step_seconds": round(counters.step_seconds, 2),
            "steps": trainer.state.global_step, "final_loss": round(out.training_loss, 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=ROOT / "examples" / "data" / "train.jsonl")
    ap.add_argument("--convs", type=int, default=8, help="training conversations (4 pairs each)")
    ap.add_argument("--pairs-per-step", type=int, default=8,
                    help="(conversation, task) pairs per optimizer step, both trainers")
    ap.add_argument("--baseline-batch", type=int, default=2, help="baseline micro-batch (padded together)")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_throughput.json")
    args = ap.parse_args(argv)
    if args.pairs_per_step % len(TASKS) or args.pairs_per_step % args.baseline_batch:
        ap.error(f"--pairs-per-step must be a multiple of {len(TASKS)} and of --baseline-batch")

    import torch

    from convtune.models import resolve_model

    torch.set_num_threads(args.threads)
    peak = matmul_peak(args.threads)
    print(f"fp32 matmul peak: {peak['gflops']} GFLOP/s ({args.threads} threads)", flush=True)
    model_dir = resolve_model(args.model)
    results = {}
    with tempfile.TemporaryDirectory(prefix="convtune-bench-") as tmp:
        runs = [("convtune", run_convtune),  # the default LoRA config (dropout 0)
                # the profile's lever: LoRA dropout draws a mask over every LoRA input (7 per layer);
                # at 0 PEFT skips the op. The previous default, same seed and data: compare final losses
                ("convtune_lora_dropout_0.05", lambda a, w: run_convtune(a, w, lora_dropout=0.05)),
                ("trl_baseline", run_baseline)]
        for name, fn in runs:
            print(f"training: {name} ...", flush=True)
            torch.manual_seed(0)
            r = fn(args, Path(tmp))
            secs = r["step_seconds"]
            mean_seq = r["padded_tokens"] / max(1, r["examples"] or 1)
            fpt, shape = model_flops_per_token(model_dir, mean_seq)
            r.update({
                "pairs_per_second": round(r["pairs"] / secs, 3),
                "tokens_per_second": round(r["tokens"] / secs, 1),
                "padding_share": round(1 - r["tokens"] / r["padded_tokens"], 3),
                "model_gflops_per_second": round(fpt * r["tokens"] / secs / 1e9, 2),
                "mfu": round(fpt * r["tokens"] / secs / (peak["gflops"] * 1e9), 4),
            })
            results[name] = r
    ratio = results["convtune"]["pairs_per_second"] / results["trl_baseline"]["pairs_per_second"]

    cols = ["pairs", "examples", "tokens", "padding_share", "step_seconds", "pairs_per_second",
            "tokens_per_second", "mfu", "final_loss"]
    print(f"\n{'trainer':<14}" + "".join(f"{c:>18}" for c in cols))
    for name, r in results.items():
        print(f"{name:<14}" + "".join(f"{r[c]!s:>18}" for c in cols))
    print(f"\nconvtune trains {ratio:.2f}x the (conversation, task) pairs per second of the TRL baseline")
    tps = {name: r["tokens_per_second"] for name, r in results.items()}
    lever = tps["convtune"] / tps["convtune_lora_dropout_0.05"]
    print(f"LoRA dropout 0 (default) vs 0.05: {lever:.2f}x the tokens/s, final loss "
          f"{results['convtune']['final_loss']} vs {results['convtune_lora_dropout_0.05']['final_loss']}")

    payload = {
        "benchmark": "training_throughput", "model": args.model, "conversations": args.convs,
        "tasks": TASKS, "pairs_per_step": args.pairs_per_step, "baseline_batch": args.baseline_batch,
        "max_seq_len": args.max_seq_len,
        "threads": args.threads, "matmul_peak": peak, "model_shape": shape,
        "machine": machine(args.threads),
        "results": results, "pairs_per_second_ratio": round(ratio, 2),
        "lora_dropout_0_vs_0.05_tokens_per_second": round(lever, 2),
    }
    return write_result(args.out, payload)


if __name__ == "__main__":
    sys.exit(main())
