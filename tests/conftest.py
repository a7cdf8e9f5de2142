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


@pytest.fixture(scope="session")
def tiny_model_dir(default_model_dir, tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64, ~3M parameters) with the real SmolLM2 tokenizer and
    chat template, saved once per session: mechanics tests train and serve it in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,  # wide logits: no near-ties in greedy argmax; a few steps move them
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
