"""Embeddings and index at scale: encoder overhead, build time, query latency, HNSW recall, memory.

In one run:

* encoding throughput of ``embeddings.Encoder`` vs calling sentence-transformers
  directly on the same texts (real conversation windows from the sample data
  and, when present, Banking77 utterances), same batch size;
* for each size (default 10k and 100k chunks): time to add through
  ``Collection.add`` (SQLite transactions) and to build the FAISS index (flat
  and HNSW), query latency p50/p99 (one query at a time, k=10, including the
  docstore lookup), recall@10 of HNSW against exact search, and bytes per 100k
  chunks on disk and in memory (FAISS index). The vectors at scale are random
  unit vectors fed through a pass-through encoder: index cost does not depend
  on what the text says, and encoding 100k chunks would take ~15 min here.

    HF_HUB_OFFLINE=1 python benchmarks/embeddings_index.py [--sizes 10000 100000] [--queries 200]

Prints a table, writes ``benchmarks/results/embeddings_index.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402


class VectorEncoder:
    """Pass-through encoder: the text is the row number of a precomputed unit vector."""

    def __init__(self, vectors: np.ndarray):
        from embeddings.encoder import EncoderIdentity

        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.identity = EncoderIdentity("random", "random", self.dim, True, 0)

    def encode(self, texts):
        from embeddings.encoder import Encoded

        return Encoded(self.vectors[[int(t.split()[0]) for t in texts]], 0)


def sample_texts(limit: int) -> list[str]:
    from convtune.data import load_conversations
    from embeddings.chunking import chunk_conversation

    texts = []
    for split in ("train", "test"):
        _, convs = load_conversations(ROOT / "examples" / "data" / f"{split}.jsonl")
        texts += [c.text for conv in convs for c in chunk_conversation(conv)]
    b77 = ROOT.parent / "shared" / "datasets" / "banking77" / "test.csv"
    if b77.is_file():
        import csv

        with b77.open(newline="", encoding="utf-8") as f:
            texts += [r["text"] for r in csv.DictReader(f)]
    return texts[:limit]


def encoding(n_texts: int, rounds: int = 2) -> dict:
    from sentence_transformers import SentenceTransformer

    from embeddings import default_encoder_dir
    from embeddings.encoder import Encoder

    texts = sample_texts(n_texts)
    ours = Encoder()
    direct = SentenceTransformer(str(default_encoder_dir()), device="cpu")
    direct.max_seq_length = ours.max_tokens
    best = {"convtune": float("inf"), "sentence_transformers": float("inf")}
    for _ in range(rounds):  # alternate so machine noise hits both
        t = time.perf_counter()
        ours.encode(texts)
        best["convtune"] = min(best["convtune"], time.perf_counter() - t)
        t = time.perf_counter()
        direct.encode(texts, batch_size=ours.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        best["sentence_transformers"] = min(best["sentence_transformers"], time.perf_counter() - t)
    return {"texts": len(texts), **{f"{k}_texts_per_s": round(len(texts) / v, 1) for k, v in best.items()},
            "ratio": round(best["sentence_transformers"] / best["convtune"], 3)}


def scale(n: int, n_queries: int, dim: int, tmp: Path) -> dict:
    from embeddings.index import Chunk, Collection

    rng = np.random.default_rng(n)
    vecs = rng.standard_normal((n + n_queries, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    enc = VectorEncoder(vecs)
    coll = Collection(tmp / f"c{n}", enc)
    t = time.perf_counter()
    coll.add((Chunk(f"c{i}", f"{i} chunk", {"channel": "call"}) for i in range(n)), batch_size=2000)
    add_s = time.perf_counter() - t
    out = {"chunks": n, "add_seconds": round(add_s, 2)}
    queries = [f"{n + i} query" for i in range(n_queries)]
    results = {}
    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        index = coll.build(kind)
        out[f"{kind}_build_seconds"] = round(time.perf_counter() - t, 2)
        out[f"{kind}_index_bytes"] = (coll.folder / "index.faiss").stat().st_size
        lat = []
        hits = []
        for q in queries:
            t = time.perf_counter()
            hits.append(coll.search(q, k=10)[0])
            lat.append(time.perf_counter() - t)
        out[f"{kind}_p50_ms"] = round(float(np.percentile(lat, 50)) * 1000, 2)
        out[f"{kind}_p99_ms"] = round(float(np.percentile(lat, 99)) * 1000, 2)
        results[kind] = hits
        del index
    overlap = [len({h.id for h in a} & {h.id for h in e}) / 10
               for a, e in zip(results["hnsw"], results["flat"], strict=True)]
    out["hnsw_recall_at_10"] = round(float(np.mean(overlap)), 4)
    db = sum(p.stat().st_size for p in coll.folder.iterdir() if p.name.startswith("docs.sqlite"))
    out["docstore_bytes_per_100k"] = int(db * 100_000 / n)
    out["flat_index_bytes_per_100k"] = int(out["flat_index_bytes"] * 100_000 / n)
    out["hnsw_index_bytes_per_100k"] = int(out["hnsw_index_bytes"] * 100_000 / n)
    coll.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--encode-texts", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embeddings_index.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print("encoding throughput ...", flush=True)
    enc = encoding(args.encode_texts)
    print(f"  convtune {enc['convtune_texts_per_s']} texts/s, sentence-transformers "
          f"{enc['sentence_transformers_texts_per_s']} texts/s (ratio {enc['ratio']})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="convtune-index-bench-") as tmp:
        for n in args.sizes:
            print(f"index at {n} chunks ...", flush=True)
            rows.append(scale(n, args.queries, 384, Path(tmp)))
    cols = ["chunks", "add_seconds", "flat_build_seconds", "hnsw_build_seconds", "flat_p50_ms", "flat_p99_ms",
            "hnsw_p50_ms", "hnsw_p99_ms", "hnsw_recall_at_10", "docstore_bytes_per_100k",
            "hnsw_index_bytes_per_100k"]
    widths = [len(c) + 2 for c in cols]
    print("\n" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths)))
    for r in rows:
        print("".join(f"{r[c]!s:>{w}}" for c, w in zip(cols, widths)))
    return write_result(args.out, {"benchmark": "embeddings_index", "encoding": enc, "scale": rows,
                                   "queries": args.queries, "machine": machine(args.threads)})


if __name__ == "__main__":
    sys.exit(main())
