"""Builders for server tests: tiny LoRA runs, an app on the tiny model, tenants with keys."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORE = ["summary", "action_items", "intent", "sentiment"]


def make_run(tiny_model_dir: Path, out: Path, seed: int) -> Path:
    """A run directory with a random (non-identity) LoRA adapter on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convtune.renderer import SYSTEM_PROMPT

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "tokenizer")
    (out / "config.json").write_text(
        json.dumps({"model": {"name": str(tiny_model_dir)}, "tasks": {"names": CORE}})
    )
    (out / "tasks.json").write_text(
        json.dumps(
            {
                "tasks": [{"name": n} for n in CORE],
                "weights": {},
                "task_files": [],
                "intent_labels": None,
                "renderer": {
                    "system_prompt": SYSTEM_PROMPT,
                    "max_transcript_tokens": 512,
                    "max_context_tokens": 256,
                },
                "max_seq_len": 1024,
                "few_shot": None,
            }
        )
    )
    (out / "metrics.json").write_text("{}")
    return out


@dataclass
class Server:
    app: Any
    ctx: Any
    acme: str  # API keys
    globex: str


def make_server(tiny_model_dir: Path, home: Path, runs: dict[str, Path], **settings: Any) -> Server:
    from convtune.models import load_model
    from serve.app import create_app
    from serve.context import build_context
    from serve.settings import load_settings

    s = load_settings(
        {
            "home": home,
            "base_model": "tiny-base",
            "batch_wait_ms": 20,
            "max_tokens_limit": 64,
            "default_max_tokens": 32,
            **settings,
        },
        env={},
    )
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    ctx = build_context(s, model=model, tokenizer=tok)
    acme, globex = ctx.keys.create("acme"), ctx.keys.create("globex")
    if runs:
        ctx.models.add("acme", "alpha", runs["alpha"])
        ctx.models.add("acme", "beta", runs["beta"])
        ctx.models.add("globex", "gamma", runs["alpha"])
    return Server(create_app(context=ctx), ctx, acme, globex)


@contextlib.contextmanager
def over_http(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free local port (the CLI speaks urllib, not the test
    client); lifespan off: the test client already started the engine. Yields the base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline:
            raise AssertionError("uvicorn did not start in 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
