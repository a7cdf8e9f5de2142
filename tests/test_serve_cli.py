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
    assert f"convtune playground: http://127.0.0.1:{port}/playground/" in res.stdout  # said at start-up
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


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_fast_cpu_mode_keeps_adapters_loadable(tiny_model_dir, tmp_path, scheme):
    import torch
    from peft import PeftModel

    from convtune.inference.quantize import QuantLinear, quantize_for_cpu
    from convtune.models import load_model

    run = make_run(tiny_model_dir, tmp_path / "run", seed=5)
    ref, _ = load_model(str(tiny_model_dir), device="cpu")
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_for_cpu(model, scheme)
    bits = {n.rsplit(".", 1)[-1]: m.bits for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert set(bits) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert bits["down_proj"] == (4 if scheme == "int4" else 8)
    assert bits["lm_head"] == 8  # a 4-bit head costs quality
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert model.state_dict().keys() == state.keys()  # packed weights are not state
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        fast, exact = model(ids).logits, ref(ids).logits
    peft = PeftModel.from_pretrained(model, run / "adapter", adapter_name="a0").eval()  # wraps in place
    with torch.no_grad():
        with peft.disable_adapter():
            base = peft(ids).logits
        tuned = peft(ids, adapter_names=["a0"]).logits
    assert not torch.equal(fast, exact)  # really low precision ...
    close = 0.95 if scheme == "int4" else 0.99  # random tiny weights; real ones: decode_speed.py
    assert torch.corrcoef(torch.stack([fast.flatten(), exact.flatten()]))[0, 1] > close  # ... close
    assert not torch.allclose(base, tuned)  # the LoRA adapter applies on top of the quantised layers
    assert any(isinstance(m, QuantLinear) for m in peft.modules())


def test_fast_cpu_packs_a_loaded_runs_base_layers_and_keeps_lora_float(tiny_model_dir, tmp_path):
    """``convtune evaluate --fast-cpu`` quantises a run loaded with its adapter: only the base
    layers are packed; LoRA's A/B matrices stay float and the adapter still changes the output."""
    import torch
    from peft import PeftModel

    from convtune.inference.quantize import QuantLinear, quantize_for_cpu
    from convtune.models import load_model

    run = make_run(tiny_model_dir, tmp_path / "run", seed=5)
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    peft = PeftModel.from_pretrained(model, run / "adapter").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        exact = peft(ids).logits
    quantize_for_cpu(peft)
    lora = [m for n, m in peft.named_modules() if ".lora_A." in n or ".lora_B." in n]
    assert lora and all(type(m) is torch.nn.Linear for m in lora)
    assert sum(isinstance(m, QuantLinear) for m in peft.modules()) >= 7
    with torch.no_grad():
        fast = peft(ids).logits
        with peft.disable_adapter():
            base = peft(ids).logits
    assert torch.corrcoef(torch.stack([fast.flatten(), exact.flatten()]))[0, 1] > 0.95
    assert not torch.allclose(base, fast)


@pytest.mark.parametrize("bits", [4, 8])
def test_quant_linear_multiplies_by_its_rounded_weight(bits):
    """The packed kernels compute x @ dequantised(W).T (+ bias): the layout is right."""
    import torch

    from convtune.inference.quantize import GROUP_SIZE, QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(3, 2, 64)
    q = QuantLinear.from_linear(lin, bits)
    w = lin.weight.detach()
    if bits == 4:
        g = w.reshape(48, -1, GROUP_SIZE)
        low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        step = (high - low) / 15
        rounded = (((g - low) / step).round() * step + low).reshape(48, 64)
    else:
        step = w.abs().amax(1, keepdim=True) / 127
        rounded = (w / step).round() * step
    with torch.no_grad():
        y, want, exact = q(x), x @ rounded.T + lin.bias, lin(x)
    assert y.shape == (3, 2, 48)
    assert (y - want).norm() / want.norm() < 0.01  # bf16 activations: not bit-equal
    assert (y - exact).norm() / exact.norm() < (0.1 if bits == 4 else 0.02)
    assert QuantLinear.from_linear(torch.nn.Linear(48, 10), 4).bits == 8  # shapes 4-bit kernels refuse


def test_quant_linear_prefills_on_the_float_weight_and_decodes_on_the_packed_one():
    """A forward of ``float_rows`` token rows or more (a prompt) is the fp32 layer's; fewer rows
    (decode steps) go through the packed kernel; ``set_float_rows(None)`` packs every forward."""
    import torch

    from convtune.inference.quantize import BF16_ROWS, QuantLinear, quantize_for_cpu, set_float_rows

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = QuantLinear.from_linear(lin, 4)
    model = torch.nn.Sequential(q)
    prompt, step = torch.randn(1, q.float_rows, 64), torch.randn(2, 1, 64)
    with torch.no_grad():
        assert torch.equal(q(prompt), lin(prompt))  # bit-equal: the float weight itself
        assert not torch.equal(q(step), lin(step))  # packed: rounded weights, bf16 activations
        set_float_rows(model, None)
        assert not torch.equal(q(prompt), lin(prompt))
        # bf16 prefill (CPUs with fast bf16 GEMMs): the float weight rounded to bf16, fp32 out
        b = QuantLinear.from_linear(lin, 4, bf16_prefill=True)
        want = torch.nn.functional.linear(prompt.bfloat16(), lin.weight.bfloat16()).float() + lin.bias
        got = b(prompt)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert (got - lin(prompt)).norm() / lin(prompt).norm() < 0.01
        # a batched decode step of BF16_ROWS rows takes the bf16 copy too; fewer rows stay packed
        wide, narrow = torch.randn(BF16_ROWS[4], 1, 64), torch.randn(2, 1, 64)
        wide_want = torch.nn.functional.linear(wide.bfloat16(), lin.weight.bfloat16()).float() + lin.bias
        assert torch.equal(b(wide), wide_want) and torch.equal(b(narrow), q(narrow))
        for flag in (True, False):  # quantize_for_cpu hands the choice to every layer
            m = quantize_for_cpu(torch.nn.Sequential(torch.nn.Linear(64, 48)), bf16_prefill=flag)
            assert (m[0]._prefill is not None) is flag


def test_server_loads_the_fast_cpu_path_by_default(tiny_model_dir, tmp_path):
    from convtune.inference.quantize import QuantLinear
    from serve.context import build_context
    from serve.settings import load_settings

    flags = {"home": tmp_path, "base_model": str(tiny_model_dir), "device": "cpu"}
    ctx = build_context(load_settings(flags, env={}))
    assert any(isinstance(m, QuantLinear) for m in ctx.host.model.modules())
    off = build_context(load_settings({**flags, "fast_cpu": False}, env={}))
    assert not any(isinstance(m, QuantLinear) for m in off.host.model.modules())


def test_engine_thread_keeps_its_threads_and_helpers_start_no_openmp_team(tiny_model_dir):
    """The fast path's thread rule (in a subprocess: it changes process-wide thread settings)."""
    import subprocess
    import sys

    code = f"""
import threading, torch
from convtune.inference.quantize import engine_thread_setup, quantize_for_cpu, single_openmp_thread
from convtune.models import load_model
torch.set_num_threads(2)
model, _ = load_model({str(tiny_model_dir)!r}, device="cpu")
quantize_for_cpu(model)
seen = {{}}
def engine():
    seen["engine"] = engine_thread_setup(model), torch.get_num_threads()
    late = threading.Thread(target=lambda: seen.__setitem__("late", torch.get_num_threads()))
    late.start(); late.join()
    def helper():
        single_openmp_thread(); seen["helper"] = torch.get_num_threads()
    h = threading.Thread(target=helper); h.start(); h.join()
t = threading.Thread(target=engine); t.start(); t.join()
print(seen["engine"], seen["late"], seen["helper"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.split("\n")[-2] == "(2, 2) 1 1"  # engine keeps 2; later threads get 1
