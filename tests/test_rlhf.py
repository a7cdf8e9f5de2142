"""DPO and KTO mechanics on the tiny model: the policy adapter moves, the reference does not."""

from __future__ import annotations

import json

import pytest

from .serve_helpers import make_run

PROMPT = [
    {"role": "user", "content": "Summarize: the customer's card was charged twice; the agent refunded it."}
]


def _pairs(path, n=4):
    rows = [
        {
            "input": {"messages": PROMPT},
            "preferred_output": [
                {"role": "assistant", "content": f"Double charge refunded by the agent ({i})."}
            ],
            "non_preferred_output": [{"role": "assistant", "content": f"ok {i}"}],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _kto(path):
    rows = [
        {"prompt": PROMPT, "completion": [{"role": "assistant", "content": text}], "label": ok}
        for text, ok in (
            ("Refunded the double charge.", True),
            ("ok", False),
            ("Card refunded.", True),
            ("no", False),
        )
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("sft"), seed=3)


def _lora(model, adapter):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter}." in n}


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_alignment_moves_the_policy_adapter_and_keeps_the_reference(method, sft_run, tmp_path):
    import torch

    from rlhf.align import AlignConfig, build_trainer

    data = _pairs(tmp_path / "p.jsonl") if method == "dpo" else _kto(tmp_path / "k.jsonl")
    cfg = AlignConfig(
        run=sft_run, data=data, out=tmp_path / "out", method=method, max_steps=2, lr=1e-2, batch_size=2
    )
    trainer = build_trainer(cfg)
    model = trainer.model
    sft = _lora(model, "default")
    assert sft and set(_lora(model, "ref")) == {n.replace(".default.", ".ref.") for n in sft}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainer.train()
    after, ref = _lora(model, "default"), _lora(model, "ref")
    assert any(not torch.equal(sft[n], after[n]) for n in sft)  # the policy moved
    for n, p in sft.items():  # the reference is the SFT adapter, frozen
        assert torch.equal(ref[n.replace(".default.", ".ref.")], p)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)  # base untouched


def test_align_writes_a_servable_run(sft_run, tmp_path):
    from convtune.tenancy import ModelStore
    from convtune.training.artifacts import load_run
    from rlhf.align import AlignConfig, align

    out = tmp_path / "dpo-run"
    metrics = align(AlignConfig(run=sft_run, data=_pairs(tmp_path / "p.jsonl"), out=out, max_steps=1))
    assert metrics["steps"] == 1 and metrics["examples"] == 4 and metrics["final_loss"] is not None
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert ModelStore(tmp_path / "home").add("acme", "dpo-v1", out).name == "dpo-v1"
    model, _, _, tasks, _ = load_run(out, device="cpu")  # what `convtune evaluate --run` loads
    assert tasks and any("lora_" in n for n, _ in model.named_parameters())


def test_bad_alignment_data_fails_before_weights_load(sft_run, tmp_path):
    from convtune.errors import ConfigError
    from rlhf.align import AlignConfig, build_trainer

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": PROMPT, "completion": [{"role": "assistant", "content": "x"}], "label": True})
        + "\n"
    )
    with pytest.raises(ConfigError, match="not dpo data"):
        build_trainer(AlignConfig(run=sft_run, data=bad, out=tmp_path / "o"))
    with pytest.raises(ConfigError, match="both desirable"):
        build_trainer(AlignConfig(run=sft_run, data=bad, out=tmp_path / "o", method="kto"))


def test_reward_model_learns_a_preference_and_scores_held_out_pairs(sft_run, tmp_path):
    from rlhf.reward import RewardModelConfig, train_reward_model

    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Summarize call {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"The agent refunded charge {i} today."}],
            "non_preferred_output": [{"role": "assistant", "content": "ok"}],
        }
        for i in range(20)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "reward"
    metrics = train_reward_model(
        RewardModelConfig(run=sft_run, data=data, out=out, max_steps=12, lr=5e-3, batch_size=4, held_out=0.25)
    )
    assert metrics["held_out_pairs"] == 5 and metrics["train_pairs"] == 15
    assert metrics["pairwise_accuracy"] >= 0.8, metrics  # an easy, consistent preference
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in (saved.get("modules_to_save") or [])


def test_cli_align_and_reward_model(sft_run, tmp_path, capsys):
    from convtune.cli import main

    data = _pairs(tmp_path / "p.jsonl")
    assert (
        main(["align", str(sft_run), "--data", str(data), "--out", str(tmp_path / "dpo"), "--max-steps", "1"])
        == 0
    )
    assert "dpo: 1 steps on 4 examples" in capsys.readouterr().out
    assert (
        main(
            [
                "reward-model",
                str(sft_run),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "rm"),
                "--max-steps",
                "1",
            ]
        )
        == 0
    )
    assert "pairwise accuracy on 1 held-out pairs" in capsys.readouterr().out


def _labelled(path, n=2):
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "examples" / "data" / "train.jsonl"
    path.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return path


def test_rloo_moves_the_policy_by_metric_and_reward_model_rewards(sft_run, tmp_path):
    import torch

    from rlhf.online import OnlineConfig, build_trainer
    from rlhf.reward import RewardModelConfig, train_reward_model

    rm = tmp_path / "rm"
    train_reward_model(RewardModelConfig(run=sft_run, data=_pairs(tmp_path / "p.jsonl"), out=rm, max_steps=1))
    cfg = OnlineConfig(run=sft_run, data=_labelled(tmp_path / "c.jsonl"), out=tmp_path / "rloo",
                       reward_model=rm, max_steps=2, lr=1e-2, num_generations=2, max_completion_length=8,
                       temperature=1.0)
    trainer = build_trainer(cfg)
    assert [f.__name__ for f in trainer.reward_funcs] == ["task_metric", "reward_model"]
    from convtune.data import load_conversations
    from convtune.evaluation.evaluate import resolve_tasks
    from convtune.renderer import TaskTurn
    from rlhf.common import load_run_parts

    _, _, renderer = load_run_parts(sft_run)
    (task,) = resolve_tasks(["summary"], run_dir=sft_run)
    conv = load_conversations(cfg.data)[1][0]
    served = renderer.encode(conv, [TaskTurn(task.instruction)]).input_ids
    assert trainer.processing_class(text=trainer.train_dataset[0]["prompt"])["input_ids"] == served
    model = trainer.model
    sft = _lora(model, "default")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainer.train()
    after = _lora(model, "default")
    assert any(not torch.equal(sft[n], after[n]) for n in sft)  # rewards moved the policy
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)  # base untouched
    rewards = [h for h in trainer.state.log_history if "reward" in h]
    assert rewards and all("rewards/reward_model/mean" in h for h in rewards)


def test_cli_online_rl_writes_a_run_and_refuses_bad_input(sft_run, tmp_path, capsys):
    from convtune.cli import main
    from convtune.training.artifacts import load_run

    data = _labelled(tmp_path / "c.jsonl")
    out = tmp_path / "rloo"
    args = ["online-rl", str(sft_run), "--data", str(data), "--out", str(out)]
    assert main(args + ["--max-steps", "1", "--num-generations", "2", "--max-completion-length", "6"]) == 0
    assert "rloo: 1 steps on 2 summary prompts" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "rloo" and metrics["reward"]
    load_run(out, device="cpu")  # servable and evaluable like any run
    for extra, message in (
        (["--metric-weight", "0"], "no reward"),
        (["--reward-model", str(sft_run)], "is not a reward model"),
        (["--task", "nope"], "nope"),
    ):
        assert main(args + extra) != 0
        assert message in capsys.readouterr().err
