"""`convtune index add|search|stats|delete`: build and query a tenant's retrieval collections."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from convtune.errors import ConfigError

_DOC_SUFFIXES = {".md", ".txt", ".markdown", ".rst"}


def add_index_parser(subparsers: Any) -> None:
    index = subparsers.add_parser("index", help="embed documents and conversations for retrieval")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--collection", "-c", default="default", help="collection name (default: default)")
        p.add_argument("--tenant", default="default", help="tenant that owns the collection")

    p = isub.add_parser("add", help="add documents (.md/.txt, or folders of them) or conversations "
                        "(any `data import` format)")
    p.add_argument("files", nargs="+", type=Path, metavar="PATH")
    common(p)
    p.add_argument("--window", type=int, default=6, help="turns per conversation chunk")
    p.add_argument("--stride", type=int, default=4, help="turns between conversation chunk starts")
    p.add_argument("--max-words", type=int, default=150, help="words per document chunk")
    p.add_argument("--no-redact", action="store_true", help="index conversations without PII redaction")
    p.set_defaults(func=cmd_index_add)

    p = isub.add_parser("search", help="the chunks most similar to a query")
    p.add_argument("query")
    common(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--speaker")
    p.add_argument("--channel")
    p.add_argument("--from", dest="date_from", type=date.fromisoformat, help="YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", type=date.fromisoformat, help="YYYY-MM-DD")
    p.add_argument("--tag", action="append", default=[], help="required tag (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    p.set_defaults(func=cmd_index_search)

    p = isub.add_parser("stats", help="size, encoder and index kind of a collection")
    common(p)
    p.set_defaults(func=cmd_index_stats)

    p = isub.add_parser("delete", help="delete chunks by id (a conversation's chunks: --conversation ID)")
    p.add_argument("ids", nargs="*")
    common(p)
    p.add_argument("--conversation", action="append", default=[],
                   help="delete every chunk of this conversation")
    p.set_defaults(func=cmd_index_delete)


def _chunks_of(path: Path, args: argparse.Namespace) -> list[Any]:
    from embeddings.chunking import chunk_conversation, chunk_document

    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    if path.suffix.lower() in _DOC_SUFFIXES:
        return chunk_document(path.stem, path.read_text(encoding="utf-8"), max_words=args.max_words,
                              metadata={"file": path.name})
    from convtune.data import load_conversations, redact_all

    _, convs = load_conversations(path)
    if not args.no_redact:
        convs = redact_all(convs)[0]
    return [c for conv in convs for c in chunk_conversation(conv, window=args.window, stride=args.stride)]


def cmd_index_add(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from embeddings.store import open_collection

    files = []
    for f in args.files:  # a folder stands for the documents in it
        files += sorted(p for p in f.rglob("*") if p.suffix.lower() in _DOC_SUFFIXES) if f.is_dir() else [f]
    chunks = [c for f in files for c in _chunks_of(f, args)]  # every file validated before any write
    coll = open_collection(args.collection, args.tenant)
    total = {"added": 0, "updated": 0, "unchanged": 0, "truncated": 0}
    step = 256
    with tqdm(total=len(chunks), unit="chunk", desc=f"indexing {args.collection}",
              disable=len(chunks) < step or not sys.stderr.isatty()) as bar:
        for start in range(0, len(chunks), step):
            rep = coll.add(chunks[start:start + step], batch_size=step)
            for key in total:
                total[key] += getattr(rep, key)
            bar.update(len(chunks[start:start + step]))
    coll.index()  # build/refresh the FAISS file now, not at the first search
    print(f"{args.collection}: {total['added']} added, {total['updated']} updated, "
          f"{total['unchanged']} unchanged ({len(coll)} chunks)"
          + (f"; {total['truncated']} chunks truncated by the encoder" if total["truncated"] else ""))
    coll.close()
    return 0


def cmd_index_search(args: argparse.Namespace) -> int:
    from embeddings.index import Filter
    from embeddings.store import open_collection

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    coll = open_collection(args.collection, args.tenant, create=False)
    where = Filter(speaker=args.speaker, channel=args.channel, date_from=args.date_from, date_to=args.date_to,
                   tags=args.tag)
    (hits,) = coll.search(args.query, k=args.k, where=where)
    for rank, h in enumerate(hits, 1):
        if args.json:
            print(json.dumps({"rank": rank, "id": h.id, "score": round(h.score, 4), "text": h.text,
                              "metadata": h.metadata}, ensure_ascii=False))
        else:
            first = h.text.splitlines()[0] if h.text else ""
            print(f"{rank:>2}. {h.score:.3f}  {h.id}  {first[:100]}")
    if not hits and not args.json:
        print("no matches")
    coll.close()
    return 0


def cmd_index_stats(args: argparse.Namespace) -> int:
    from embeddings.store import open_collection

    coll = open_collection(args.collection, args.tenant, create=False)
    coll.index()
    print(json.dumps(coll.stats(), indent=2))
    coll.close()
    return 0


def cmd_index_delete(args: argparse.Namespace) -> int:
    from embeddings.store import open_collection

    coll = open_collection(args.collection, args.tenant, create=False)
    ids = list(args.ids)
    for conv_id in args.conversation:
        ids += [r[0] for r in coll.db.execute("SELECT id FROM items WHERE id LIKE ?", (f"{conv_id}#%",))]
    if not ids:
        raise ConfigError("name chunk ids or --conversation ID to delete")
    n = coll.delete(ids)
    print(f"{args.collection}: deleted {n} chunks ({len(coll)} left)")
    coll.close()
    return 0
