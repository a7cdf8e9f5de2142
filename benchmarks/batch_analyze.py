"""Batch analysis vs one call at a time: the sample test conversations x the 4 core tasks through
one batch (``/v1/batches``) vs the same analyses sent one by one to ``/v1/conversations/analyze``,
sequentially and at concurrency 4; same server, model and greedy decoding, one run. Chat latency
is measured on the idle server and while a batch runs (a second batch of ``--chat-batch``
conversations, chat requests 2 s apart during it; the timed batch runs alone).

    HF_HUB_OFFLINE=1 python benchmarks/batch_analyze.py [--conversations 36] [--adapter runs/demo/train]

Prints a table, writes ``benchmarks/results/batch_analyze.json``: ``{"machine": {...},
"conversations": n, "batch_s": x, "sequential_s": x, "concurrent4_s": x, "identical_outputs": k,
"chat_p50_idle_s": x, "chat_p50_during_batch_s": x, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402
from benchmarks.serve_load import CORE, ServerProcess, chat_prompts, sample_conversations  # noqa: E402

ANALYZE = "/v1/conversations/analyze"


def bodies(model: str, n: int) -> list[dict]:
    out = []
    for conv in sample_conversations(n):
        messages = [{"id": t.id, "speaker": t.speaker, "text": t.text} for t in conv.turns]
        out.append({"model": model, "tasks": CORE, "conversation": {"messages": messages}})
    return out


def stable(analysis: dict) -> dict:
    """What two greedy analyses of one conversation share (ids, timestamps and timings differ)."""
    out = {k: v for k, v in analysis.items() if k not in ("id", "created", "conversation_id", "usage")}
    out["analytics"] = {k: v for k, v in out["analytics"].items() if k != "conversation_id"}
    return out


def sequential(client, reqs: list[dict]) -> tuple[float, list[dict]]:
    t0, out = time.perf_counter(), []
    for body in reqs:
        r = client.post(ANALYZE, json=body)
        r.raise_for_status()
        out.append(r.json())
    return time.perf_counter() - t0, out


async def concurrent(server: ServerProcess, reqs: list[dict], level: int) -> float:
    import httpx2 as httpx

    todo = list(reqs)

    async def worker(client) -> None:
        while todo:
            r = await client.post(ANALYZE, json=todo.pop(0))
            r.raise_for_status()

    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=3600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(level)))
        return time.perf_counter() - t0


def chat_latencies(
    client, model: str, prompts: list, max_tokens: int, until=None, gap_s: float = 0.0
) -> list[float]:
    """Sequential chat requests (all of ``prompts``, or round after round while ``until()`` is
    false), ``gap_s`` apart: a person chatting, not a load test."""
    lat: list[float] = []
    i = 0
    while (until is None and i < len(prompts)) or (until is not None and not until()):
        t = time.perf_counter()
        r = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": prompts[i % len(prompts)], "max_tokens": max_tokens},
        )
        r.raise_for_status()
        lat.append(time.perf_counter() - t)
        i += 1
        time.sleep(gap_s)
    return lat


def run_batch(
    client, server: ServerProcess, reqs: list[dict], tmp: Path, chat: dict | None
) -> tuple[float, list[dict]]:
    """Upload, create, poll to completed; with ``chat``, chat requests run on another thread meanwhile."""
    path = tmp / "batch.jsonl"
    path.write_text(
        "".join(
            json.dumps({"custom_id": f"conv-{i}", "method": "POST", "url": ANALYZE, "body": b}) + "\n"
            for i, b in enumerate(reqs)
        )
    )
    ended = threading.Event()
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        f = client.post("/v1/files", files={"file": ("batch.jsonl", fh)}, data={"purpose": "batch"}).json()
    assert f["status"] == "processed", f
    batch = client.post(
        "/v1/batches", json={"input_file_id": f["id"], "endpoint": ANALYZE, "completion_window": "24h"}
    ).json()
    started = threading.Event()

    def chatter() -> None:
        import httpx2 as httpx

        if chat is None:
            return
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as c:
            started.wait()
            chat["during"] = chat_latencies(
                c, server.model_id, chat["prompts"], chat["max_tokens"], ended.is_set, gap_s=chat["gap_s"]
            )

    thread = threading.Thread(target=chatter)
    thread.start()
    while True:
        b = client.get(f"/v1/batches/{batch['id']}").json()
        if b["request_counts"]["completed"] >= 1:
            started.set()  # chat while the batch is under way (its lines in the engine)
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    ended.set()
    started.set()
    thread.join()
    assert b["status"] == "completed", b
    out = [json.loads(x) for x in client.get(f"/v1/files/{b['output_file_id']}/content").text.splitlines()]
    by_id = {o["custom_id"]: o["response"]["body"] for o in out}
    return wall, [by_id[f"conv-{i}"] for i in range(len(reqs))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", type=Path, help="a run folder served as the tenant's model (default: base)")
    ap.add_argument("--conversations", type=int, default=36)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--chat-requests", type=int, default=8, help="idle chat requests (p50 baseline)")
    ap.add_argument("--chat-max-tokens", type=int, default=32)
    ap.add_argument("--chat-batch", type=int, default=12, help="conversations of the batch chat runs against")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_analyze.json")
    args = ap.parse_args(argv)
    import httpx2 as httpx

    from convtune.models import resolve_model

    args.served_name = str(resolve_model(args.model))
    with tempfile.TemporaryDirectory(prefix="convtune-batch-bench-") as home:
        server = ServerProcess(args, Path(home))
        try:
            reqs = bodies(server.model_id, args.conversations)
            prompts = chat_prompts(args.chat_requests)
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=3600) as client:
                chat_latencies(client, server.model_id, prompts[:1], args.chat_max_tokens)  # warm-up
                idle = chat_latencies(client, server.model_id, prompts, args.chat_max_tokens)
                print(f"chat p50 idle {np.median(idle):.2f} s", flush=True)
                seq_s, seq_out = sequential(client, reqs)
                print(f"sequential analyze: {seq_s:.1f} s", flush=True)
                conc_s = asyncio.run(concurrent(server, reqs, 4))
                print(f"concurrency 4: {conc_s:.1f} s", flush=True)
                batch_s, batch_out = run_batch(client, server, reqs, Path(home), None)
                print(f"batch: {batch_s:.1f} s", flush=True)
                # chat while a batch runs: a second, shorter batch, chat requests 2 s apart during it
                chat = {"prompts": prompts, "max_tokens": args.chat_max_tokens, "during": [], "gap_s": 2.0}
                run_batch(client, server, reqs[: args.chat_batch], Path(home), chat)
        finally:
            server.close()
    same = sum(stable(a) == stable(b) for a, b in zip(seq_out, batch_out))
    during = chat["during"]
    n = args.conversations
    print(f"\n{'mode':<28}{'seconds':>10}{'s/conversation':>16}{'vs sequential':>15}")
    for name, s in (
        ("sequential analyze", seq_s),
        ("analyze, concurrency 4", conc_s),
        ("one batch", batch_s),
    ):
        print(f"{name:<28}{s:>10.1f}{s / n:>16.2f}{seq_s / s:>14.2f}x")
    p50_idle, p50_during = float(np.median(idle)), float(np.median(during)) if during else None
    print(f"\nbatch outputs identical to sequential analyze: {same}/{n}")
    print(
        f"chat p50: idle {p50_idle:.2f} s, during the batch {p50_during} s "
        f"({len(during)} requests; {p50_during / p50_idle:.2f}x)"
        if during
        else "no chat during the batch"
    )
    return write_result(
        args.out,
        {
            "benchmark": "batch_analyze",
            "model": Path(args.served_name).name,
            "adapter": str(args.adapter) if args.adapter else None,
            "machine": machine(),
            "conversations": n,
            "tasks": CORE,
            "batch_s": round(batch_s, 2),
            "sequential_s": round(seq_s, 2),
            "concurrent4_s": round(conc_s, 2),
            "batch_speedup": round(seq_s / batch_s, 2),
            "concurrent4_speedup": round(seq_s / conc_s, 2),
            "identical_outputs": same,
            "chat_p50_idle_s": round(p50_idle, 3),
            "chat_p50_during_batch_s": round(p50_during, 3) if during else None,
            "chat_during_ratio": round(p50_during / p50_idle, 2) if during else None,
            "chat_requests_during_batch": len(during),
            "max_batch_size": args.max_batch_size,
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())
