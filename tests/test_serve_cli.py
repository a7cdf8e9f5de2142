"""`convtune serve` as a user runs it: the README's serving examples, verbatim, against a tiny model."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from .conftest import ROOT
from .serve_helpers import make_run

pytest.importorskip("openai")
sys.path.insert(0, str(ROOT / "examples"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_readme_serving_examples_run_verbatim(tiny_model_dir, tmp_path, monkeypatch):
    import serve_examples

    make_run(tiny_model_dir, tmp_path / "runs" / "demo" / "train", seed=3)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = serve_examples.script()
    port = 8000
    if not _port_free(port):  # someone else's server: same commands on a free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = script.replace("localhost:8000", f"localhost:{port}").replace(
            "--port 8000", f"--port {port}"
        )
    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONVTUNE_SERVE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("CONVTUNE_URL", f"http://localhost:{port}")
    monkeypatch.setattr(serve_examples, "script", lambda: script)
    res = serve_examples.run(tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    decode = json.JSONDecoder().raw_decode  # curl prints no newline after a body
    chat, _ = decode(res.stdout, res.stdout.index('{"id":"chatcmpl-'))
    assert chat["model"] == "support-v1" and chat["choices"][0]["message"]["role"] == "assistant"
    analysis, _ = decode(res.stdout, res.stdout.index('{"id":"analysis-'))
    assert set(analysis["tasks"]) == {"summary", "action_items", "intent", "sentiment"}
    assert analysis["analytics"]["speakers"] and analysis["messages"][0]["id"] == "t1"
    assert "'support-v1'" in res.stdout and "2 embeddings of 384 dimensions" in res.stdout
    assert _port_free(port)  # the server was stopped
    assert not os.environ.get("CONVTUNE_API_KEY")


def test_settings_precedence_and_errors(tmp_path):
    from convtune.errors import ConfigError
    from serve.settings import load_settings

    env = {
        "CONVTUNE_HOME": str(tmp_path),
        "CONVTUNE_SERVE_MAX_BATCH_SIZE": "4",
        "CONVTUNE_SERVE_PORT": "9000",
    }
    s = load_settings({"port": 9100}, env=env)
    assert (s.home, s.max_batch_size, s.port, s.max_concurrent_requests) == (tmp_path, 4, 9100, 128)
    with pytest.raises(ConfigError) as e:
        load_settings({"port": 0, "max_batch_size": 0}, env=env)
    assert "port" in str(e.value) and "max_batch_size" in str(e.value)  # every problem at once
    with pytest.raises(ConfigError, match="unknown server setting"):
        load_settings({"prot": 1}, env=env)
    with pytest.raises(ConfigError, match="default_max_tokens"):
        load_settings({"max_tokens_limit": 10}, env=env)


def test_keys_and_models_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from convtune.cli import main
    from convtune.tenancy import KeyStore

    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "home"))
    assert main(["keys", "create", "--tenant", "acme"]) == 0
    key = capsys.readouterr().out.strip()
    store = KeyStore(tmp_path / "home" / "server.sqlite")
    assert key.startswith("ct-") and store.tenant_of(key) == "acme" and store.tenant_of(key + "x") is None
    assert key not in (tmp_path / "home" / "server.sqlite").read_bytes().decode("latin-1")  # only the hash
    assert main(["keys", "list"]) == 0 and key[:10] in capsys.readouterr().out
    assert main(["keys", "revoke", key[:10]]) == 0 and store.tenant_of(key) is None
    assert main(["keys", "create", "--tenant", "../etc"]) == 2
    run = make_run(tiny_model_dir, tmp_path / "run", seed=4)
    capsys.readouterr()
    assert main(["models", "add", str(run), "--tenant", "acme", "--name", "support-v1"]) == 0
    assert main(["models", "add", str(run), "--tenant", "acme", "--name", "support-v1"]) == 2  # exists
    assert "already has a model" in capsys.readouterr().err
    assert main(["models", "add", str(tmp_path), "--tenant", "acme", "--name", "x"]) == 2  # not a run
    assert main(["models", "list", "--tenant", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "support-v1"
    assert main(["models", "remove", "--tenant", "acme", "--name", "support-v1"]) == 0


def test_evidence_points_at_the_turns_an_output_rests_on():
    from convtune.attribution import evidence, split_sentences
    from convtune.conversation import Conversation
    from convtune.ingest.transcript import conversation_from_text

    conv = conversation_from_text(
        "Agent: Thanks for calling Kestrel Mobile.\n"
        "Customer: My eSIM cannot make calls since yesterday.\n"
        "Agent: I will reset the eSIM profile and text you a confirmation code."
    )
    assert isinstance(conv, Conversation) and [t.id for t in conv.turns] == ["t1", "t2", "t3"]
    assert evidence("Agent will reset the eSIM profile", conv) == ["t2", "t3"]
    assert evidence("Agent will reset the eSIM profile", conv, limit=1) == ["t3"]
    assert evidence("weather on Mars", conv) == []  # nothing shared: no guess
    assert split_sentences("Calls fail. The agent resets the eSIM! Done?") == [
        "Calls fail.",
        "The agent resets the eSIM!",
        "Done?",
    ]


def test_fast_cpu_mode_keeps_adapters_loadable(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel

    from convtune.models import load_model
    from serve.fast import Int8Linear, quantize_for_cpu

    run = make_run(tiny_model_dir, tmp_path / "run", seed=5)
    ref, _ = load_model(str(tiny_model_dir), device="cpu")
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    quantize_for_cpu(model)
    kinds = {n.rsplit(".", 1)[-1]: type(m).__name__ for n, m in model.named_modules() if n.endswith("proj")}
    assert kinds["q_proj"] == "Int8Linear" and kinds["down_proj"] == "Linear"  # outlier layer stays float
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        fast = model.model(ids).last_hidden_state
        exact = ref.model(ids).last_hidden_state
    peft = PeftModel.from_pretrained(model, run / "adapter", adapter_name="a0").eval()  # wraps in place
    with torch.no_grad():
        with peft.disable_adapter():
            base = peft(ids).logits
        tuned = peft(ids, adapter_names=["a0"]).logits
    assert torch.corrcoef(torch.stack([fast.flatten(), exact.flatten()]))[0, 1] > 0.99  # close, not equal
    assert not torch.allclose(base, tuned)  # the LoRA adapter applies on top of int8 layers
    assert any(isinstance(m, Int8Linear) for m in peft.modules())
