"""Server under load: throughput and latency at concurrency 1/4/16 vs sequential generate calls.

In one run, on the same model and prompts (greedy, so every mode produces the
same tokens):

1. baseline: sequential ``Generator.generate`` calls in this process, one
   request at a time (what a naive server loop does);
2. ``convtune serve`` in a subprocess (uvicorn, real HTTP), driven by N
   concurrent clients posting ``/v1/chat/completions``; per level: requests/s,
   completion tokens/s, latency p50/p99, and the ratio to the baseline;
3. call analytics: ``/v1/conversations/analyze`` (4 core tasks, one request:
   transcript encoded once, KV cache reused) vs the same 4 task prompts sent one
   by one through ``/v1/model/generate``: mean seconds per conversation and how many
   answers parse into each task's typed shape (analyze decodes guided, one by one free);
4. the fast CPU path (``convtune.inference.quantize``, int4): single-stream tokens/s vs fp32,
   greedy outputs identical to fp32 (share of prompts), and perplexity of the
   sample transcripts under both (quality cost).

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py [--requests 32] [--max-tokens 48] [--adapter RUN_DIR]

Prints tables, writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

CORE = ["summary", "action_items", "intent", "sentiment"]


def sample_conversations(n: int) -> list:
    from convtune.data import load_conversations

    _, convs = load_conversations(ROOT / "examples" / "data" / "test.jsonl")
    return convs[:n]


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    """Varied chat requests: "summarise this call" over the first turns of sample calls."""
    out = []
    for conv in sample_conversations(n):
        lines = "\n".join(f"{t.speaker}: {t.text}" for t in conv.turns[:6])
        out.append([{"role": "user", "content": f"Summarise this call in one sentence:\n{lines}"}])
    return out


def percentiles(lat: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p99_s": round(float(np.percentile(lat, 99)), 3),
    }


# ---- 1. baseline and 4. fast mode (in process) ------------------------------------------------


def sequential(model, tok, prompts: list[list[int]], max_tokens: int) -> tuple[dict, list[str]]:
    import torch

    from convtune.evaluation.generate import Generator

    gen = Generator(model, tok)
    lat, tokens, texts = [], 0, []
    with torch.inference_mode():
        gen.generate([prompts[0]], 4)  # warm-up
        t0 = time.perf_counter()
        for p in prompts:
            t = time.perf_counter()
            (g,) = gen.generate([p], max_tokens)
            lat.append(time.perf_counter() - t)
            tokens += len(g.token_ids) - int(g.stopped)
            texts.append(g.text)
        wall = time.perf_counter() - t0
    return {
        "requests": len(prompts),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(prompts) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        **percentiles(lat),
    }, texts


def perplexity(model, tok, texts: list[str]) -> float:
    import torch

    nll, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:512]])
            out = model(input_ids=ids, labels=ids)
            nll += float(out.loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return round(float(np.exp(nll / count)), 3)


def with_adapter(model, adapter: Path | None):
    """The model as the server runs it: with the run's LoRA adapter (unmerged) when given."""
    if adapter is None:
        return model
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(model, adapter / "adapter").eval()


def in_process(args, prompts: list[list[int]]) -> dict:
    from convtune.models import load_model
    from convtune.inference.quantize import quantize_for_cpu

    model, tok = load_model(args.model, device="cpu")
    served = with_adapter(model, args.adapter)
    base, base_texts = sequential(served, tok, prompts, args.max_tokens)
    print(f"baseline (sequential generate): {base['tokens_per_s']} tokens/s, p50 {base['p50_s']} s",
          flush=True)
    transcripts = ["\n".join(f"{t.speaker}: {t.text}" for t in c.turns) for c in sample_conversations(12)]
    ppl_fp32 = perplexity(served, tok, transcripts)
    single = prompts[: max(4, len(prompts) // 4)]
    fp32, _ = sequential(served, tok, single, args.max_tokens)
    model, _ = load_model(args.model, device="cpu")
    fast_model = with_adapter(quantize_for_cpu(model), args.adapter)
    fast_run, fast_texts = sequential(fast_model, tok, single, args.max_tokens)
    fast = {
        "fp32_tokens_per_s": fp32["tokens_per_s"],
        "fast_tokens_per_s": fast_run["tokens_per_s"],
        "speedup": round(fast_run["tokens_per_s"] / fp32["tokens_per_s"], 2),
        "greedy_outputs_identical": round(float(np.mean([a == b for a, b in zip(base_texts, fast_texts)])),
                                          3),
        "perplexity_fp32": ppl_fp32,
        "perplexity_fast": perplexity(fast_model, tok, transcripts),
        "prompts": len(single),
    }
    print(
        f"fast CPU path: {fast['fast_tokens_per_s']} vs fp32 {fast['fp32_tokens_per_s']} tokens/s "
        f"({fast['speedup']}x); identical outputs {fast['greedy_outputs_identical']:.0%}; perplexity "
        f"{fast['perplexity_fp32']} -> {fast['perplexity_fast']}",
        flush=True,
    )
    return {"baseline": base, "fast_cpu": fast}


# ---- 2. and 3. the server over HTTP --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args, home: Path, extra: Sequence[str] = ()):
        from convtune.tenancy import KeyStore, ModelStore

        self.key = KeyStore(home / "server.sqlite").create("bench")
        self.model_id = args.served_name
        if args.adapter:
            ModelStore(home).add("bench", "bench-adapter", args.adapter, replace=True)
            self.model_id = "bench-adapter"
        self.port = free_port()
        env = {**os.environ, "CONVTUNE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "convtune.cli",
                "serve",
                "--port",
                str(self.port),
                "--base-model",
                args.served_name,
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-tokens-limit",
                "1024",
                *extra,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait_ready()

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx2 as httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            try:
                if httpx.get(f"{self.url}/ready", headers=self.headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def load_level(server: ServerProcess, messages: list, concurrency: int, max_tokens: int) -> dict:
    import httpx2 as httpx

    queue = list(range(len(messages)))
    lat: list[float] = []
    tokens = 0
    errors = 0

    async def worker(client) -> None:
        nonlocal tokens, errors
        while queue:
            i = queue.pop(0)
            t = time.perf_counter()
            r = await client.post(
                "/v1/chat/completions",
                json={"model": server.model_id, "messages": messages[i], "max_tokens": max_tokens},
            )
            lat.append(time.perf_counter() - t)
            if r.status_code == 200:
                tokens += r.json()["usage"]["completion_tokens"]
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(messages),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(messages) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        **percentiles(lat),
    }


def analyze_vs_one_by_one(server: ServerProcess, n: int) -> dict:
    import httpx2 as httpx

    from convtune.evaluation.generate import max_new_tokens_for
    from tasks.registry import default_registry

    tasks = [default_registry().get(t) for t in CORE]
    one, each = [], []
    valid_one = dict.fromkeys(CORE, 0)  # analyze: labels scored, structured answers schema-guided
    valid_each = dict.fromkeys(CORE, 0)  # one by one: free generation, parsed by the same task parsers
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as client:
        for conv in sample_conversations(n):
            messages = [{"id": t.id, "speaker": t.speaker, "text": t.text} for t in conv.turns]
            t = time.perf_counter()
            r = client.post(
                "/v1/conversations/analyze",
                json={"model": server.model_id, "tasks": CORE, "conversation": {"messages": messages}},
            )
            one.append(time.perf_counter() - t)
            r.raise_for_status()
            for name, entry in r.json()["tasks"].items():
                valid_one[name] += bool(entry["valid"])
            text = "\n".join(f"{t.speaker}: {t.text}" for t in conv.turns)
            t = time.perf_counter()
            for task in tasks:
                r = client.post(
                    "/v1/model/generate",
                    json={
                        "model": server.model_id,
                        "max_new_tokens": max_new_tokens_for(task),
                        "prompt": {"instruction": task.instruction, "conversation": {"text": text}},
                    },
                )
                r.raise_for_status()
                valid_each[task.name] += task.parse(r.json()["output"]["text"]).ok
            each.append(time.perf_counter() - t)
    return {
        "conversations": n,
        "valid_analyze": valid_one,
        "valid_one_by_one": valid_each,
        "analyze_mean_s": round(float(np.mean(one)), 2),
        "one_by_one_mean_s": round(float(np.mean(each)), 2),
        "speedup": round(float(np.mean(each) / np.mean(one)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", type=Path, help="a training run to serve (default: the base model)")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--analyze-conversations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args(argv)

    import torch

    from convtune.models import load_model, resolve_model
    from convtune.renderer import Renderer

    torch.set_num_threads(args.threads)
    args.served_name = args.model  # the server resolves the name in its own home
    args.model = str(resolve_model(args.model))
    messages = chat_prompts(args.requests)
    _, tok = load_model(args.model, device="cpu")
    prompts = [Renderer(tok).encode_chat(m).input_ids for m in messages]
    results = in_process(args, prompts)
    with tempfile.TemporaryDirectory(prefix="convtune-serve-bench-") as home:
        server = ServerProcess(args, Path(home))
        try:
            levels = []
            for c in args.concurrency:
                row = asyncio.run(load_level(server, messages, c, args.max_tokens))
                row["throughput_vs_sequential"] = round(
                    row["tokens_per_s"] / results["baseline"]["tokens_per_s"], 2
                )
                levels.append(row)
                print(
                    f"concurrency {c}: {row['tokens_per_s']} tokens/s ({row['throughput_vs_sequential']}x), "
                    f"p50 {row['p50_s']} s, p99 {row['p99_s']} s, errors {row['errors']}",
                    flush=True,
                )
            results["server"] = levels
            results["analyze"] = analyze_vs_one_by_one(server, args.analyze_conversations)
            print(
                f"analyze (4 tasks, one call) {results['analyze']['analyze_mean_s']} s vs one by one "
                f"{results['analyze']['one_by_one_mean_s']} s ({results['analyze']['speedup']}x); "
                f"valid answers of {args.analyze_conversations}: "
                f"analyze {results['analyze']['valid_analyze']}, "
                f"one by one {results['analyze']['valid_one_by_one']}",
                flush=True,
            )
        finally:
            server.close()

    b = results["baseline"]
    print(f"\n{'mode':<28}{'req/s':>8}{'tokens/s':>10}{'p50 s':>8}{'p99 s':>8}{'vs seq':>8}")
    print(
        f"{'sequential generate':<28}{b['requests_per_s']:>8}{b['tokens_per_s']:>10}"
        f"{b['p50_s']:>8}{b['p99_s']:>8}"
        f"{1.0:>8}"
    )
    for r in results["server"]:
        print(
            f"{'server, concurrency ' + str(r['concurrency']):<28}{r['requests_per_s']:>8}"
            f"{r['tokens_per_s']:>10}"
            f"{r['p50_s']:>8}{r['p99_s']:>8}{r['throughput_vs_sequential']:>8}"
        )
    payload = {
        "benchmark": "serve_load",
        "model": Path(args.model).name,
        "adapter": str(args.adapter or ""),
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "machine": machine(args.threads),
        **results,
    }
    return write_result(args.out, payload)


if __name__ == "__main__":
    sys.exit(main())
