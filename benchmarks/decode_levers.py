"""Levers for single-stream CPU decoding that were measured and not shipped, against the
fast path they would replace, in one run on the same model and prompt (greedy, 2 threads):

1. the fast path's decode step as the engine runs it (4-bit weights, HF's forward, a
   ``DynamicCache``), eager;
2. the same step under ``torch.compile(dynamic=True)`` (inductor's C++ backend): compile
   seconds and decode tokens/s;
3. CTranslate2 (``pip install ctranslate2``; skipped with a message otherwise), the model
   converted to int8, at compute types ``int8`` and ``int8_float32``.

    HF_HUB_OFFLINE=1 python benchmarks/decode_levers.py [--prompt-tokens 300] [--new-tokens 40]

Prints a table, writes ``benchmarks/results/decode_levers.json``:
``{"machine": {...}, "decode_tps": {"fast_eager": x, "fast_compiled": x, "ctranslate2_int8": x|null,
"ctranslate2_int8_float32": x|null}, "compile_s": x, ...}``.
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


def step_tps(forward, model, prompt, new_tokens: int) -> tuple[float, float]:
    """(seconds of the first 3 steps: warm-up/compile, decode tokens/s after them)."""
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(3):
            out = forward(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(new_tokens):
            out = forward(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
        return warm, new_tokens / (time.perf_counter() - t)


def ctranslate2_tps(model_dir: str, tok, prompt: list[int], new_tokens: int, threads: int) -> dict | None:
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        print("CTranslate2: skipped (pip install ctranslate2)")
        return None
    out: dict[str, float] = {}
    tokens = tok.convert_ids_to_tokens(prompt)
    with tempfile.TemporaryDirectory(prefix="convtune-ct2-") as tmp:
        TransformersConverter(model_dir).convert(tmp, quantization="int8", force=True)
        for compute in ("int8", "int8_float32"):
            gen = ctranslate2.Generator(tmp, device="cpu", compute_type=compute, intra_threads=threads)
            kw = {"include_prompt_in_result": False}
            gen.generate_batch([tokens], max_length=2, **kw)  # warm-up
            t = time.perf_counter()
            gen.generate_batch([tokens], max_length=1, min_length=1, **kw)
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            gen.generate_batch([tokens], max_length=new_tokens + 1, min_length=new_tokens + 1, **kw)
            out[compute] = round(new_tokens / (time.perf_counter() - t - prefill), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--scheme", choices=("int4", "int8"), default="int4")
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_levers.json")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.decode_speed import long_messages
    from convtune.inference.quantize import quantize_for_cpu
    from convtune.models import load_model, resolve_model
    from convtune.renderer import Renderer

    torch.set_num_threads(args.threads)
    folder = str(resolve_model(args.model))
    model, tok = load_model(folder, device="cpu")
    quantize_for_cpu(model, args.scheme)
    ids = Renderer(tok).encode_chat(long_messages(tok, args.prompt_tokens)).input_ids
    prompt = torch.tensor([ids])

    _, eager = step_tps(model, model, prompt, args.new_tokens)
    print(f"fast path, eager: {eager:.1f} tokens/s", flush=True)
    compile_s, compiled = step_tps(torch.compile(model, dynamic=True), model, prompt, args.new_tokens)
    print(f"fast path, torch.compile: {compiled:.1f} tokens/s after {compile_s:.0f} s compiling", flush=True)
    _, eager_again = step_tps(model, model, prompt, args.new_tokens)
    ct2 = ctranslate2_tps(folder, tok, ids, args.new_tokens, args.threads) or {}

    rows = {
        "fast_eager": round((eager + eager_again) / 2, 2),
        "fast_compiled": round(compiled, 2),
        "ctranslate2_int8": ct2.get("int8"),
        "ctranslate2_int8_float32": ct2.get("int8_float32"),
    }
    print(f"\n{'decode, ' + str(len(ids)) + '-token prompt':<32}{'tokens/s':>10}{'vs fast eager':>15}")
    for name, tps in rows.items():
        ratio = f"{tps / rows['fast_eager']:.2f}x" if tps else "skipped"
        print(f"{name:<32}{tps if tps else '-':>10}{ratio:>15}")
    return write_result(args.out, {
        "benchmark": "decode_levers",
        "model": Path(folder).name,
        "scheme": args.scheme,
        "machine": machine(args.threads),
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "decode_tps": rows,
        "fast_eager_runs": [round(eager, 2), round(eager_again, 2)],
        "compile_s": round(compile_s, 1),
    })


if __name__ == "__main__":
    raise SystemExit(main())
