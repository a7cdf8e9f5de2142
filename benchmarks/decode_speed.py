"""Decoding speed on CPU: HF ``generate`` fp32 vs the server's engine fp32 vs the fast CPU path
(vs llama.cpp when ``llama-cpp-python`` is installed), and the fast path's quality cost.

In one run, on the same model and prompts (greedy):

1. single stream: decode tokens/s and prefill tokens/s at a 300- and a 1,500-token prompt,
   for HF ``generate`` fp32 in this process, ``convtune serve --no-fast-cpu`` and
   ``convtune serve`` (fast path, the default) over HTTP (streamed: decode speed is
   measured from the first to the last token), and llama.cpp on the packaged GGUF;
2. throughput and latency p50/p99 at concurrency 1, 4 and 16 through the fast server, vs
   the same prompts through sequential HF ``generate`` fp32 calls;
3. ``/v1/conversations/analyze`` (4 core tasks) seconds per call, fp32 and fast server;
4. quality: perplexity of the sample transcripts under fp32 and the fast path (every token
   through the packed weights, also those a prefill would multiply in fp32: the worst case),
   and greedy agreement on the chat prompts (identical outputs, and the share of tokens before the
   first difference).

    HF_HUB_OFFLINE=1 python benchmarks/decode_speed.py [--scheme int4] [--requests 16]

Prints a table, writes ``benchmarks/results/decode_speed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402
from benchmarks.serve_load import (  # noqa: E402
    CORE,
    ServerProcess,
    chat_prompts,
    load_level,
    perplexity,
    sample_conversations,
)


def long_messages(tok, n_tokens: int) -> list[dict[str, str]]:
    """A chat request whose transcript fills about ``n_tokens`` prompt tokens."""
    text = "\n\n".join("\n".join(f"{t.speaker}: {t.text}" for t in c.turns) for c in sample_conversations(36))
    ids = tok(text, add_special_tokens=False)["input_ids"][: max(n_tokens - 40, 10)]
    return [{"role": "user", "content": "Summarise this call transcript in detail:\n" + tok.decode(ids)}]


# ---- in process: HF generate -------------------------------------------------------------------------


def hf_single(model, prompt: list[int], new_tokens: int) -> dict:
    """Decode and prefill tokens/s of one HF ``generate`` call producing exactly ``new_tokens``."""
    import torch

    ids = torch.tensor([prompt])

    def timed(n: int) -> float:
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - t

    with torch.inference_mode():
        timed(2)  # warm-up
        prefill = timed(1)
        total = timed(new_tokens)
    return {
        "decode_tps": round((new_tokens - 1) / (total - prefill), 2),
        "prefill_tps": round(len(prompt) / prefill, 1),
    }


def hf_sequential(model, prompts: list[list[int]], max_tokens: int) -> tuple[dict, list[list[int]]]:
    """One HF ``generate`` call per prompt, one after another (stops at end of turn)."""
    import torch

    outs, lat = [], []
    with torch.inference_mode():
        t0 = time.perf_counter()
        for p in prompts:
            t = time.perf_counter()
            out = model.generate(torch.tensor([p]), max_new_tokens=max_tokens, do_sample=False)
            lat.append(time.perf_counter() - t)
            outs.append(out[0, len(p) :].tolist())
        wall = time.perf_counter() - t0
    tokens = sum(len(o) for o in outs)
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        "seconds": round(wall, 2),
        "p50_s": round(float(np.percentile(lat, 50)), 3),
    }, outs


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(share of identical outputs, mean share of tokens before the first difference)."""
    same = float(np.mean([x == y for x, y in zip(a, b)]))
    prefix = []
    for x, y in zip(a, b):
        k = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        prefix.append(k / max(len(x), len(y), 1))
    return round(same, 3), round(float(np.mean(prefix)), 3)


# ---- over HTTP -----------------------------------------------------------------------------------------


def served_single(server: ServerProcess, messages: list[dict[str, str]], new_tokens: int) -> dict:
    """Streamed greedy chat completion: decode tokens/s between the first and the last token,
    prefill tokens/s from the time to the first token."""
    import httpx2 as httpx

    body = {
        "model": server.model_id,
        "messages": messages,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    best: dict = {}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
        for _ in range(2):  # the second run is measured warm
            stamps, usage = [], None
            t0 = time.perf_counter()
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                        stamps.append(time.perf_counter())
            n = usage["completion_tokens"]
            best = {
                "decode_tps": round((n - 1) / (stamps[-1] - stamps[0]), 2) if n > 1 else None,
                "prefill_tps": round(usage["prompt_tokens"] / (stamps[0] - t0), 1),
                "completion_tokens": n,
            }
    return best


def analyze_s(server: ServerProcess, n: int) -> float:
    import httpx2 as httpx

    times = []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
        for conv in sample_conversations(n):
            messages = [{"id": t.id, "speaker": t.speaker, "text": t.text} for t in conv.turns]
            t = time.perf_counter()
            r = client.post(
                "/v1/conversations/analyze",
                json={"model": server.model_id, "tasks": CORE, "conversation": {"messages": messages}},
            )
            r.raise_for_status()
            times.append(time.perf_counter() - t)
    return round(float(np.mean(times)), 2)


# ---- llama.cpp (optional) ------------------------------------------------------------------------------


def llama_cpp_single(model_name: str, tok, lengths: list[int], new_tokens: int, threads: int) -> dict | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: skipped (pip install llama-cpp-python: it builds from source, ~12 min)")
        return None
    from convtune.models import PACKAGED_MODELS, _packaged_gguf_path

    llm = Llama(
        model_path=str(_packaged_gguf_path(PACKAGED_MODELS[model_name])),
        n_threads=threads,
        n_ctx=4096,
        verbose=False,
    )
    out = {}
    for n in lengths:
        prompt = tok.apply_chat_template(long_messages(tok, n), tokenize=False, add_generation_prompt=True)
        stamps = []
        t0 = time.perf_counter()
        for _ in llm.create_completion(prompt, max_tokens=new_tokens, temperature=0, stream=True):
            stamps.append(time.perf_counter())
        out[str(n)] = {
            "decode_tps": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2),
            "prefill_tps": round(len(llm.tokenize(prompt.encode())) / (stamps[0] - t0), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--scheme", choices=("int4", "int8"), default="int4", help="the fast path's weights")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[300, 1500])
    ap.add_argument("--new-tokens", type=int, default=64, help="decoded per single-stream measurement")
    ap.add_argument("--requests", type=int, default=16, help="chat requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--analyze-conversations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode_speed.json")
    args = ap.parse_args(argv)

    import torch

    from convtune.inference.quantize import packed_bytes, quantize_for_cpu, set_float_rows
    from convtune.models import load_model, resolve_model
    from convtune.renderer import Renderer

    torch.set_num_threads(args.threads)
    name = args.model
    args.model = args.served_name = str(resolve_model(args.model))  # servers load the same folder
    args.adapter = None
    fp32, tok = load_model(args.model, device="cpu")
    fast, _ = load_model(args.model, device="cpu")
    quantize_for_cpu(fast, args.scheme)
    renderer = Renderer(tok)
    long = {n: long_messages(tok, n) for n in args.prompt_tokens}
    long_ids = {n: renderer.encode_chat(m).input_ids for n, m in long.items()}
    messages = chat_prompts(args.requests)
    prompts = [renderer.encode_chat(m).input_ids for m in messages]

    single: dict[str, dict] = {"hf_fp32": {}, "engine_fp32": {}, "fast": {}, "hf_fast": {}}
    for n, ids in long_ids.items():
        single["hf_fp32"][str(n)] = hf_single(fp32, ids, args.new_tokens)
        single["hf_fast"][str(n)] = hf_single(fast, ids, args.new_tokens)
        print(
            f"prompt {len(ids)} tokens: HF fp32 {single['hf_fp32'][str(n)]}, "
            f"HF fast {single['hf_fast'][str(n)]}",
            flush=True,
        )
    sequential, seq_out = hf_sequential(fp32, prompts, args.max_tokens)
    _, fast_out = hf_sequential(fast, prompts, args.max_tokens)
    same, prefix = agreement(seq_out, fast_out)
    transcripts = ["\n".join(f"{t.speaker}: {t.text}" for t in c.turns) for c in sample_conversations(12)]
    set_float_rows(fast, None)  # every token through the packed weights: the worst case
    ppl = {"fp32": perplexity(fp32, tok, transcripts), "fast": perplexity(fast, tok, transcripts)}
    print(
        f"sequential HF generate fp32: {sequential['tokens_per_s']} tokens/s; perplexity {ppl}; "
        f"greedy identical {same}, prefix {prefix}",
        flush=True,
    )
    extra_bytes = packed_bytes(fast)
    del fast

    analyze: dict[str, float] = {}
    levels: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="convtune-decode-bench-") as home:
        for mode, flags in (("engine_fp32", ["--no-fast-cpu"]), ("fast", ["--cpu-weights", args.scheme])):
            (Path(home) / mode).mkdir()
            server = ServerProcess(args, Path(home) / mode, flags)
            try:
                for n in args.prompt_tokens:
                    single[mode][str(n)] = served_single(server, long[n], args.new_tokens)
                    print(f"{mode}, prompt {n}: {single[mode][str(n)]}", flush=True)
                analyze[mode] = analyze_s(server, args.analyze_conversations)
                print(f"{mode}: analyze {analyze[mode]} s per call", flush=True)
                if mode == "fast":
                    for c in args.concurrency:
                        row = asyncio.run(load_level(server, messages, c, args.max_tokens))
                        row["vs_sequential_hf"] = round(row["tokens_per_s"] / sequential["tokens_per_s"], 2)
                        levels[str(c)] = row
                        print(
                            f"concurrency {c}: {row['tokens_per_s']} tokens/s ({row['vs_sequential_hf']}x), "
                            f"p50 {row['p50_s']} s, p99 {row['p99_s']} s, errors {row['errors']}",
                            flush=True,
                        )
            finally:
                server.close()
    llama = llama_cpp_single(name, tok, args.prompt_tokens, args.new_tokens, args.threads)
    single["llama_cpp"] = llama or {}

    first = str(args.prompt_tokens[0])
    print(
        f"\n{'single stream, decode tokens/s':<32}"
        + "".join(f"{n + ' tok':>12}" for n in map(str, args.prompt_tokens))
        + f"{'vs HF fp32':>12}"
    )
    for mode in ("hf_fp32", "engine_fp32", "hf_fast", "fast", "llama_cpp"):
        if not single[mode]:
            continue
        row = "".join(f"{single[mode][str(n)]['decode_tps']:>12}" for n in args.prompt_tokens)
        ratio = single[mode][first]["decode_tps"] / single["hf_fp32"][first]["decode_tps"]
        print(f"{mode:<32}{row}{ratio:>11.2f}x")
    print(f"\n{'concurrency':<14}{'tokens/s':>10}{'p50 s':>8}{'p99 s':>8}{'vs seq HF':>11}")
    print(f"{'sequential HF':<14}{sequential['tokens_per_s']:>10}{sequential['p50_s']:>8}{'':>8}{1.0:>11}")
    for c, row in levels.items():
        print(
            f"{c:<14}{row['tokens_per_s']:>10}{row['p50_s']:>8}{row['p99_s']:>8}{row['vs_sequential_hf']:>11}"
        )
    print(
        f"\nanalyze s/call: {analyze}; perplexity {ppl}; greedy identical {same} (prefix {prefix}); "
        f"packed weights {extra_bytes / 2**20:.0f} MiB"
    )
    payload = {
        "benchmark": "decode_speed",
        "model": Path(args.model).name,
        "scheme": args.scheme,
        "machine": machine(args.threads),
        "single_stream_tps": {
            k: (single[k][first]["decode_tps"] if single[k] else None)
            for k in ("hf_fp32", "engine_fp32", "fast", "llama_cpp")
        },
        "single_stream": single,
        "concurrency_tps": {c: row["tokens_per_s"] for c, row in levels.items()},
        "concurrency": levels,
        "sequential_tps": sequential["tokens_per_s"],
        "analyze_s_per_call": analyze.get("fast"),
        "analyze_s_per_call_fp32": analyze.get("engine_fp32"),
        "perplexity": ppl,
        "greedy_agreement": same,
        "greedy_prefix_agreement": prefix,
        "packed_weight_mib": round(extra_bytes / 2**20, 1),
        "new_tokens": args.new_tokens,
        "max_tokens": args.max_tokens,
    }
    return write_result(args.out, payload)


if __name__ == "__main__":
    sys.exit(main())
