"""A named collection of embedded chunks: SQLite docstore + FAISS index, no pickle anywhere.

Layout of a collection folder::

    docs.sqlite    items (id, text, content hash, metadata JSON, filter columns, float32 vector)
                   and meta (encoder identity, version); the source of truth
    index.faiss    faiss.write_index of the vectors (a cache of docs.sqlite)
    index.json     {"version": N, "kind": "flat" | "hnsw", "count": n} of that cache

Crash safety: every change is one SQLite transaction that also bumps
``version``; a process killed mid-add leaves the previous committed state.
The FAISS file is rebuilt from SQLite whenever its ``index.json`` version is
not the database's, and is written to a temporary file and renamed, so a
reader never sees half an index.

Exact inner-product search (``IndexFlatIP``) below ``approximate_above``
items, HNSW above it; both behind ``IndexIDMap`` keyed by SQLite row ids, so
metadata filters become a FAISS ID selector.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from convtune.errors import ConfigError

APPROXIMATE_ABOVE = 50_000
HNSW_M = 32  # graph degree; see benchmarks/embeddings_index.py for the recall/latency measured
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    hash TEXT NOT NULL,
    metadata TEXT NOT NULL,
    speaker TEXT, channel TEXT, date TEXT, tags TEXT,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_channel ON items(channel);
CREATE INDEX IF NOT EXISTS items_date ON items(date);
"""


@dataclass
class Chunk:
    """One piece of text to index. ``metadata`` may hold speaker, channel, date (ISO), tags (list)
    and anything else JSON can carry (conversation id, turn ids, source)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]


@dataclass
class Filter:
    """Metadata filter; every set field must match (``speaker``: one of the chunk's speakers)."""

    speaker: str | None = None
    channel: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    tags: Sequence[str] = ()  # all of them

    def sql(self) -> tuple[str, list[Any]]:
        where, args = [], []
        if self.speaker is not None:  # any of the chunk's speakers
            where.append("speaker LIKE ?")
            args.append(f"%|{self.speaker}|%")
        if self.channel is not None:
            where.append("channel = ?")
            args.append(self.channel)
        if self.date_from is not None:
            where.append("date >= ?")
            args.append(self.date_from.isoformat())
        if self.date_to is not None:
            where.append("date <= ?")
            args.append(self.date_to.isoformat())
        for tag in self.tags:
            where.append("tags LIKE ?")
            args.append(f"%|{tag}|%")
        return " AND ".join(where), args

    def empty(self) -> bool:
        return not self.sql()[0]


@dataclass
class AddReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0  # same id and same text: not re-embedded
    truncated: int = 0  # texts the encoder cut at its max length


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _bars(values: Any) -> str | None:
    """``["a", "b"]`` -> ``"|a|b|"`` (matched with LIKE '%|a|%'); ``None`` when empty."""
    if isinstance(values, str):
        values = [values]
    values = [str(v) for v in values or [] if v is not None]
    return "|" + "|".join(values) + "|" if values else None


def _filter_columns(meta: dict[str, Any]) -> tuple[Any, ...]:
    d = meta.get("date")
    return (_bars(meta.get("speakers") or meta.get("speaker")), meta.get("channel"),
            str(d)[:10] if d else None, _bars(meta.get("tags")))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Collection:
    """One named collection in ``folder``. Open with the encoder that fills it.

    Raises:
        ConfigError: the collection was built with a different encoder (identity mismatch).
    """

    def __init__(self, folder: str | Path, encoder: Any, *, approximate_above: int = APPROXIMATE_ABOVE):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder = encoder
        self.approximate_above = approximate_above
        self.db = sqlite3.connect(self.folder / "docs.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._index: Any = None
        self._index_version = -1
        identity = encoder.identity.as_dict()
        row = self.db.execute("SELECT value FROM meta WHERE key = 'encoder'").fetchone()
        if row is None:
            with self._tx():
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('encoder', ?)", (json.dumps(identity),))
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('version', '0')")
        else:
            problems = encoder.identity.mismatch(json.loads(row[0]))
            if problems:
                raise ConfigError(
                    f"collection {self.folder.name!r} was built with encoder "
                    f"{json.loads(row[0]).get('name')!r}, "
                    f"not this one ({'; '.join(problems)}); open it with the same encoder or re-index"
                )

    # ---- bookkeeping -------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction: committed on success, rolled back on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # ---- writes ------------------------------------------------------------------------

    def add(self, chunks: Iterable[Chunk], *, batch_size: int = 256) -> AddReport:
        """Add or update chunks by id; unchanged text (same content hash) is not re-embedded.
        Each batch is one transaction."""
        report = AddReport()
        batch: list[Chunk] = []
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) >= batch_size:
                self._add_batch(batch, report)
                batch = []
        if batch:
            self._add_batch(batch, report)
        return report

    def _add_batch(self, chunks: list[Chunk], report: AddReport) -> None:
        ids = [c.id for c in chunks]
        if len(set(ids)) != len(ids):
            raise ConfigError("duplicate chunk ids in one add")
        known = dict(self.db.execute(
            f"SELECT id, hash FROM items WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall())
        todo = [c for c in chunks if known.get(c.id) != content_hash(c.text)]
        report.unchanged += len(chunks) - len(todo)
        if not todo:
            return
        enc = self.encoder.encode([c.text for c in todo])
        report.truncated += enc.truncated
        with self._tx():
            for c, vec in zip(todo, enc.vectors, strict=True):
                row = (c.text, content_hash(c.text), json.dumps(c.metadata, default=str),
                       *_filter_columns(c.metadata), vec.astype(np.float32).tobytes())
                if c.id in known:
                    self.db.execute("UPDATE items SET text=?, hash=?, metadata=?, speaker=?, channel=?, "
                                    "date=?, tags=?, vector=? WHERE id=?", (*row, c.id))
                    report.updated += 1
                else:
                    self.db.execute("INSERT INTO items (text, hash, metadata, speaker, channel, date, tags, "
                                    "vector, id) VALUES (?,?,?,?,?,?,?,?,?)", (*row, c.id))
                    report.added += 1
            self._bump()

    def delete(self, ids: Sequence[str]) -> int:
        """Delete chunks by id; returns how many existed."""
        if not ids:
            return 0
        with self._tx():
            marks = ",".join("?" * len(ids))
            n = self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", list(ids)).rowcount
            if n:
                self._bump()
        return n

    # ---- the FAISS cache ---------------------------------------------------------------

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.execute("SELECT rowid, vector FROM items ORDER BY rowid").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        vecs = vecs.reshape(len(rows), self.encoder.dim)
        return ids, vecs

    def build(self, kind: str | None = None) -> Any:
        """Build the FAISS index from the docstore (``kind``: flat, hnsw, or by size) and save it."""
        import faiss

        version = self.version
        ids, vecs = self._vectors()
        kind = kind or ("hnsw" if len(ids) > self.approximate_above else "flat")
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.encoder.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == "flat":
            inner = faiss.IndexFlatIP(self.encoder.dim)
        else:
            raise ConfigError(f"index kind must be flat or hnsw, not {kind!r}")
        index = faiss.IndexIDMap(inner)
        if len(ids):
            index.add_with_ids(vecs, ids)
        _atomic_write(self.folder / "index.faiss", faiss.serialize_index(index).tobytes())
        _atomic_write(self.folder / "index.json",
                      json.dumps({"version": version, "kind": kind, "count": len(ids)}).encode())
        self._index, self._index_version = index, version
        return index

    def index(self) -> Any:
        """The FAISS index of the current version: in memory, from index.faiss, or rebuilt."""
        import faiss

        version = self.version
        if self._index is not None and self._index_version == version:
            return self._index
        stamp = self.folder / "index.json"
        try:
            info = json.loads(stamp.read_text())
            if info.get("version") == version:
                data = np.frombuffer((self.folder / "index.faiss").read_bytes(), dtype=np.uint8)
                self._index, self._index_version = faiss.deserialize_index(data), version
                return self._index
        except (OSError, ValueError, RuntimeError):
            pass  # missing, stale or unreadable cache: rebuild from the docstore
        return self.build()

    # ---- reads -------------------------------------------------------------------------

    def search(self, query: str | Sequence[str], k: int = 5, where: Filter | None = None, *,
               ef_search: int | None = None) -> list[list[Hit]]:
        """Top-``k`` chunks by cosine similarity for each query (a list of hit lists).

        ``ef_search`` (HNSW only, default ``HNSW_EF_SEARCH``): candidates explored per
        query; higher is slower and closer to exact.
        """
        import faiss

        queries = [query] if isinstance(query, str) else list(query)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if ef_search is not None and ef_search < k:
            raise ConfigError(f"ef_search must be at least k ({k}), got {ef_search}")
        index = self.index()
        sel = None
        if where is not None and not where.empty():
            clause, args = where.sql()
            rows = self.db.execute(f"SELECT rowid FROM items WHERE {clause}", args).fetchall()
            allowed = np.array([r[0] for r in rows], dtype=np.int64)
            if not len(allowed):
                return [[] for _ in queries]
            sel = faiss.IDSelectorBatch(allowed)
        if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=ef_search or HNSW_EF_SEARCH)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        if index.ntotal == 0:
            return [[] for _ in queries]
        qv = self.encoder.encode(queries).vectors
        scores, rowids = index.search(qv, min(k, index.ntotal), params=params)
        out = []
        for srow, irow in zip(scores, rowids, strict=True):
            keep = [(float(s), int(i)) for s, i in zip(srow, irow, strict=True) if i >= 0]
            found = {r[0]: r[1:] for r in self.db.execute(
                f"SELECT rowid, id, text, metadata FROM items WHERE rowid IN ({','.join('?' * len(keep))})",
                [i for _, i in keep])} if keep else {}
            out.append([Hit(found[i][0], s, found[i][1], json.loads(found[i][2]))
                        for s, i in keep if i in found])
        return out

    def get(self, chunk_id: str) -> Chunk | None:
        row = self.db.execute("SELECT id, text, metadata FROM items WHERE id = ?", (chunk_id,)).fetchone()
        return Chunk(row[0], row[1], json.loads(row[2])) if row else None

    def stats(self) -> dict[str, Any]:
        info = {}
        stamp = self.folder / "index.json"
        if stamp.is_file():
            info = json.loads(stamp.read_text())
        enc = json.loads(self.db.execute("SELECT value FROM meta WHERE key = 'encoder'").fetchone()[0])
        return {"name": self.folder.name, "count": len(self), "version": self.version, "encoder": enc,
                "index": info, "bytes": sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())}
