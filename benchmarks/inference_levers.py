"""The batched-inference levers of the fast CPU path, each against what it replaced, one run.

1. KV cache growth: a decode step of ``rows`` x ``context`` on the fast path with the in-place
   cache (``convtune.inference.kvcache``, ``SLACK`` spare columns) vs ``SLACK = 0`` (every step
   re-allocates and copies the cache: what ``DynamicLayer``'s ``torch.cat`` did).
2. bf16 prefill weights: prefill tokens/s of a 1,000-token prompt, and the perplexity of the
   sample transcripts (every forward >= 128 rows, so through the prefill weights), with the fp32
   weight vs the bf16 copy (``quantize_for_cpu(bf16_prefill=...)``); the copy's memory.
3. Many-row forwards: the packed kernel vs a bf16 GEMM for SmolLM2-135M's 8-bit head
   (576 x 49152) and a 4-bit layer (576 x 1536) at 1-16 rows (``quantize.BF16_ROWS``).
4. Attention of one decode step (16 rows x 1,500 tokens, one layer): the fp32 SDPA kernel the
   model uses vs bf16 matmul attention (a lever not built).

    HF_HUB_OFFLINE=1 python benchmarks/inference_levers.py

Prints each table, writes ``benchmarks/results/inference_levers.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402
from benchmarks.serve_load import perplexity, sample_conversations  # noqa: E402


def best_ms(fn, reps: int = 5, inner: int = 4) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return round(min(times) * 1000, 3)


def fast_model(name: str, bf16_prefill: bool):
    from convtune.inference.quantize import quantize_for_cpu
    from convtune.models import load_model

    model, tok = load_model(name, device="cpu")
    return quantize_for_cpu(model, "int4", bf16_prefill=bf16_prefill), tok


def kv_growth(gen, rows_list, contexts) -> list[dict]:
    import torch

    from convtune.inference import kvcache

    out = []
    for ctx in contexts:
        for rows in rows_list:
            row = {"rows": rows, "context": ctx}
            for label, slack in (("in_place", kvcache.SLACK), ("copy_per_step", 0)):
                saved, kvcache.SLACK = kvcache.SLACK, slack
                try:
                    with torch.inference_mode():
                        kv = gen.rows(rows, reuse=False)
                        kv.prefill([[(i * 7 + r) % 40000 + 100 for i in range(ctx)] for r in range(rows)])
                        toks = [200] * rows
                        kv.step(toks)
                        row[f"{label}_ms"] = best_ms(partial(kv.step, toks), reps=3, inner=4)
                finally:
                    kvcache.SLACK = saved
            row["speedup"] = round(row["copy_per_step_ms"] / row["in_place_ms"], 2)
            print(f"step {rows:>2} rows x {ctx:>4}: in place {row['in_place_ms']:8.1f} ms, "
                  f"copy per step {row['copy_per_step_ms']:8.1f} ms ({row['speedup']}x)", flush=True)
            out.append(row)
    return out


def prefill(gen, tok, n_tokens: int) -> float:
    import torch

    text = "\n".join(f"{t.speaker}: {t.text}" for c in sample_conversations(12) for t in c.turns)
    ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
    with torch.inference_mode():
        ms = best_ms(lambda: gen.rows(1, reuse=False).prefill([ids]), reps=3, inner=1)
    return round(n_tokens / (ms / 1000), 1)


def many_rows() -> list[dict]:
    import torch

    from convtune.inference.quantize import QuantLinear

    out = []
    for k, n, bits in ((576, 49152, 8), (576, 1536, 4)):
        q = QuantLinear.from_linear(torch.nn.Linear(k, n, bias=False), bits, bf16_prefill=True)
        for m in (1, 4, 8, 16):
            flat = torch.randn(m, k).to(torch.bfloat16)
            ops = torch.ops.aten
            packed = (partial(ops._weight_int4pack_mm_for_cpu, flat, q._packed, q.group, q._scales)
                      if bits == 4 else partial(ops._weight_int8pack_mm, flat, q._packed, q._scales))
            bf16 = partial(torch.nn.functional.linear, flat, q._prefill)
            with torch.inference_mode():
                row = {"shape": f"{k}x{n}", "bits": bits, "rows": m,
                       "packed_ms": best_ms(packed, inner=10), "bf16_ms": best_ms(bf16, inner=10)}
            out.append(row)
            print(f"{k}x{n} {bits}-bit, {m:>2} rows: packed {row['packed_ms']:7.3f} ms, "
                  f"bf16 {row['bf16_ms']:7.3f} ms", flush=True)
    return out


def attention(rows: int = 16, ctx: int = 1500) -> dict:
    import torch

    f = torch.nn.functional
    res = {"rows": rows, "context": ctx}
    q = torch.randn(rows, 3, 3, 64)  # SmolLM2-135M: 3 KV heads x 3 query heads each (GQA packed)
    k, v = torch.randn(rows, 3, ctx, 64), torch.randn(rows, 3, ctx, 64)
    mask = torch.ones(rows, 1, 1, ctx, dtype=torch.bool)
    res["sdpa_fp32_ms"] = best_ms(lambda: f.scaled_dot_product_attention(q, k, v, attn_mask=mask), inner=10)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()

    def matmul_bf16():
        p = torch.softmax((qb @ kb.transpose(-1, -2)).float() * 0.125, -1).bfloat16()
        return p @ vb

    res["matmul_bf16_ms"] = best_ms(matmul_bf16, inner=10)
    res["speedup"] = round(res["sdpa_fp32_ms"] / res["matmul_bf16_ms"], 2)
    print(f"attention {rows} rows x {ctx}: sdpa fp32 {res['sdpa_fp32_ms']} ms, "
          f"bf16 matmul {res['matmul_bf16_ms']} ms ({res['speedup']}x)")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prefill-tokens", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inference_levers.json")
    args = ap.parse_args(argv)

    from convtune.inference import Generator
    from convtune.inference.quantize import bf16_prefill_pays, engine_thread_setup, prefill_bytes

    result: dict = {"benchmark": "inference_levers", "model": args.model, "machine": machine(),
                    "bf16_prefill_pays": bf16_prefill_pays()}
    transcripts = ["\n".join(f"{t.speaker}: {t.text}" for t in c.turns) for c in sample_conversations(12)]
    fp32_w, tok = fast_model(args.model, bf16_prefill=False)
    bf16_w, _ = fast_model(args.model, bf16_prefill=True)
    engine_thread_setup(bf16_w)  # the engine thread's OpenMP setting, as the server runs
    gen_fp32, gen_bf16 = Generator(fp32_w, tok), Generator(bf16_w, tok)
    result["prefill"] = {
        "prompt_tokens": args.prefill_tokens,
        "fp32_weights_tps": prefill(gen_fp32, tok, args.prefill_tokens),
        "bf16_weights_tps": prefill(gen_bf16, tok, args.prefill_tokens),
        "perplexity_fp32_weights": perplexity(fp32_w, tok, transcripts),
        "perplexity_bf16_weights": perplexity(bf16_w, tok, transcripts),
        "bf16_copy_mib": round(prefill_bytes(bf16_w) / 2**20, 1),
    }
    print(f"prefill: {result['prefill']}", flush=True)
    del gen_fp32, fp32_w
    result["kv_step"] = kv_growth(gen_bf16, [1, 4, 16], [300, 1500])
    result["many_rows"] = many_rows()
    result["attention"] = attention()
    return write_result(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
