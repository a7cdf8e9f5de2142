"""Shared fixtures. Tests never reach the network: hub access is switched off here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"


@pytest.fixture(scope="session")
def convtune_home(tmp_path_factory) -> Path:
    """Model cache for the session: $CONVTUNE_HOME when set (make test keeps one in
    .cache/ so the one-time GGUF conversion is reused across runs), else a temp dir."""
    env = os.environ.get("CONVTUNE_HOME")
    return Path(env) if env else tmp_path_factory.mktemp("convtune-home")


@pytest.fixture(scope="session")
def default_model_dir(convtune_home) -> Path:
    """The real default model, converted from the packaged GGUF once per cache."""
    from convtune.models import DEFAULT_MODEL, resolve_model

    return resolve_model(DEFAULT_MODEL, home=convtune_home)
