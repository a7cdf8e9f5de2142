"""Embeddings and index at scale: encoder overhead, build time, query latency, HNSW recall, memory.

In one run:

* encoding throughput of ``embeddings.Encoder`` vs calling sentence-transformers
  directly on the same texts (real conversation windows from the sample data
  and, when present, Banking77 utterances), same batch size;
* for each size (default 10k and 100k chunks): time to add through
  ``Collection.add`` (SQLite transactions) and to build the FAISS index (flat
  and HNSW), query latency p50/p99 (one query at a time, k=10, including the
  docstore lookup), recall@10 of HNSW against exact search at several
  ``ef_search`` values, and bytes per 100k chunks on disk and in memory.

Vectors at scale (``--vectors``):

* ``real`` (default): all-MiniLM-L6-v2 embeddings of real customer-service and
  dialogue utterances from ``../shared/datasets`` (MultiDoGo, Banking77,
  DialogSum, DailyDialog turns; deduplicated), queries are held-out utterances.
  Encoding ~110k short texts takes several minutes once; the vectors are cached
  in ``.cache/benchmarks/``. Falls back to ``random`` when the datasets are absent.
* ``random``: random unit vectors, the worst case for any graph index (no
  neighbourhood structure), kept to show where HNSW breaks down.

The index is fed through a pass-through encoder (text = row number), so index
timings exclude encoding, which is measured separately above.

    HF_HUB_OFFLINE=1 python benchmarks/embeddings_index.py [--sizes 10000 100000] [--vectors real random]

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

    def __init__(self, vectors: np.ndarray, name: str):
        from embeddings.encoder import EncoderIdentity

        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.identity = EncoderIdentity(name, name, self.dim, True, 0)

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


DATASETS = ROOT.parent / "shared" / "datasets"
EF_SEARCH = (32, 64, 128, 256)


def real_texts(root: Path = DATASETS) -> list[str]:
    """Unique real texts in a fixed order, [] without the datasets: every utterance of
    MultiDoGo, Banking77, DialogSum and DailyDialog, plus every two-turn window of the
    dialogues (what conversation chunks look like)."""
    import csv
    import json
    from itertools import groupby

    dialogues: list[list[str]] = []
    for tsv in sorted(root.glob("multidogo/turn_level/*/*.tsv")):
        with tsv.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for _, group in groupby(rows, key=lambda r: r["conversationId"]):
            dialogues.append([r["utterance"] for r in group])
    for split in ("train", "test"):
        path = root / "banking77" / f"{split}.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                dialogues += [[r["text"]] for r in csv.DictReader(f)]
    for path in sorted(root.glob("dialogsum/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            dialogues.append([t.split(":", 1)[-1] for t in json.loads(line)["dialogue"].split("\n")])
    for path in sorted(root.glob("dailydialog/*/dialogues.txt")):
        dialogues += [line.split("__eou__") for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for d in dialogues for t in d]
    texts += [f"{a}\n{b}" for d in dialogues for a, b in zip(d, d[1:])]
    seen: set[str] = set()
    out = []
    for t in (" ".join(t.split()) for t in texts):
        if len(t) >= 8 and t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    return out


def real_vectors(n: int) -> np.ndarray | None:
    """MiniLM vectors of ``n`` real texts in a seeded random order (cached), or None."""
    import hashlib

    from embeddings.encoder import Encoder

    texts = real_texts()
    if len(texts) < n:
        print(f"  only {len(texts)} real texts under {DATASETS} (need {n}); using random vectors")
        return None
    order = np.random.default_rng(0).permutation(len(texts))[:n]
    texts = [texts[i] for i in order]
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = ROOT / ".cache" / "benchmarks" / f"minilm-{n}-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    print(f"  encoding {n} real texts once (cached in {cache.parent}) ...", flush=True)
    vecs = Encoder().encode(texts, progress=True).vectors
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def scale(n: int, n_queries: int, vecs: np.ndarray, name: str, tmp: Path) -> dict:
    """Index ``n`` of ``vecs`` and query with the last ``n_queries`` rows (never indexed)."""
    from embeddings.index import Chunk, Collection

    enc = VectorEncoder(vecs, name)
    coll = Collection(tmp / f"{name}-{n}", enc)
    t = time.perf_counter()
    coll.add((Chunk(f"c{i}", f"{i} chunk", {"channel": "call"}) for i in range(n)), batch_size=2000)
    out = {"vectors": name, "chunks": n, "add_seconds": round(time.perf_counter() - t, 2)}
    queries = [f"{len(vecs) - n_queries + i} query" for i in range(n_queries)]

    def timed(**kw) -> tuple[list, list[float]]:
        hits, lat = [], []
        for q in queries:
            t = time.perf_counter()
            hits.append(coll.search(q, k=10, **kw)[0])
            lat.append(time.perf_counter() - t)
        return hits, lat

    def ms(lat: list[float], p: int) -> float:
        return round(float(np.percentile(lat, p)) * 1000, 2)

    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        coll.build(kind)
        out[f"{kind}_build_seconds"] = round(time.perf_counter() - t, 2)
        out[f"{kind}_index_bytes_per_100k"] = int((coll.folder / "index.faiss").stat().st_size * 100_000 / n)
        if kind == "flat":
            exact, lat = timed()
            out["flat_p50_ms"], out["flat_p99_ms"] = ms(lat, 50), ms(lat, 99)
            continue
        for ef in EF_SEARCH:
            hits, lat = timed(ef_search=ef)
            recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / max(1, len(e))
                              for a, e in zip(hits, exact, strict=True)])
            out[f"hnsw_ef{ef}"] = {"p50_ms": ms(lat, 50), "p99_ms": ms(lat, 99),
                                   "recall_at_10": round(float(recall), 4)}
    db = sum(p.stat().st_size for p in coll.folder.iterdir() if p.name.startswith("docs.sqlite"))
    out["docstore_bytes_per_100k"] = int(db * 100_000 / n)
    coll.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--vectors", nargs="+", choices=["real", "random"], default=["real", "random"])
    ap.add_argument("--encode-texts", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3, help="encoding rounds (alternating; best of each kept)")
    ap.add_argument("--encoding-only", action="store_true", help="measure encoding throughput only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embeddings_index.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print("encoding throughput ...", flush=True)
    enc = encoding(args.encode_texts, args.rounds)
    print(f"  convtune {enc['convtune_texts_per_s']} texts/s, sentence-transformers "
          f"{enc['sentence_transformers_texts_per_s']} texts/s (ratio {enc['ratio']})", flush=True)
    if args.encoding_only:  # refresh the encoding numbers of an earlier full run
        import json

        old = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "embeddings_index"}
        return write_result(args.out, {**old, "encoding": enc, "encoding_machine": machine(args.threads)})
    from embeddings.index import HNSW_EF_SEARCH

    rows = []
    need = max(args.sizes) + args.queries
    with tempfile.TemporaryDirectory(prefix="convtune-index-bench-") as tmp:
        for name in args.vectors:
            vecs = real_vectors(need) if name == "real" else None
            if vecs is None:
                if name == "real" and "random" in args.vectors:
                    continue
                name = "random"
                vecs = np.random.default_rng(0).standard_normal((need, 384)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            for n in args.sizes:
                print(f"index at {n} chunks ({name} vectors) ...", flush=True)
                rows.append(scale(n, args.queries, vecs, name, Path(tmp)))
    print(f"\nquery latency (ms, one query, k=10, incl. docstore) and HNSW recall@10 vs exact "
          f"(default ef_search {HNSW_EF_SEARCH})")
    head = (f"{'vectors':<8}{'chunks':>8}{'add s':>7}{'flat build s':>13}{'hnsw build s':>13}"
            f"{'flat p50':>9}{'p99':>7}")
    head += "".join(f"{'ef' + str(ef) + ' p50':>10}{'recall':>8}" for ef in EF_SEARCH)
    print(head)
    for r in rows:
        line = (f"{r['vectors']:<8}{r['chunks']:>8}{r['add_seconds']:>7}{r['flat_build_seconds']:>13}"
                f"{r['hnsw_build_seconds']:>13}{r['flat_p50_ms']:>9}{r['flat_p99_ms']:>7}")
        line += "".join(f"{r[f'hnsw_ef{ef}']['p50_ms']:>10}{r[f'hnsw_ef{ef}']['recall_at_10']:>8}"
                        for ef in EF_SEARCH)
        print(line)
    for r in rows:
        print(f"{r['vectors']} {r['chunks']}: bytes per 100k chunks: "
              f"docstore {r['docstore_bytes_per_100k']:,}, "
              f"flat index {r['flat_index_bytes_per_100k']:,}, hnsw index {r['hnsw_index_bytes_per_100k']:,}")
    return write_result(args.out, {"benchmark": "embeddings_index", "encoding": enc, "scale": rows,
                                   "queries": args.queries, "hnsw_default_ef_search": HNSW_EF_SEARCH,
                                   "machine": machine(args.threads)})


if __name__ == "__main__":
    sys.exit(main())
