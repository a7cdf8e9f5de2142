"""A tenant's reward model: TRL RewardTrainer on the base model with LoRA and a scalar head.

    from rlhf.reward import RewardModelConfig, train_reward_model
    metrics = train_reward_model(RewardModelConfig(base="smollm2-135m-instruct", run="runs/demo/train",
                                                   data="prefs/preferences.jsonl", out="runs/demo/reward"))
    metrics["pairwise_accuracy"]   # on held-out pairs: P(reward(preferred) > reward(non-preferred))

Sequences are the renderer's exact tokens (prompt, then the answer through its
end-of-turn token: :meth:`convtune.renderer.Renderer.preference_texts`),
pre-tokenized here so TRL does not re-render them. A seeded share of the pairs
(``held_out``) is kept out of training and scores the model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from convtune.errors import ConfigError
from rlhf.common import load_run_parts, trl_args


class RewardModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Path = Field(description="a training run: its base model, tokenizer and renderer settings")
    data: Path = Field(description="preference JSONL")
    out: Path
    held_out: float = Field(0.2, gt=0, lt=1, description="share of pairs kept out to score the model")
    epochs: int = Field(1, ge=1, le=50)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(4, ge=1)
    lora_r: int = Field(16, ge=1, le=256)
    max_length: int = Field(1024, ge=64)
    seed: int = 42
    device: str = "auto"


def reward_input_ids(renderer: Any, tokenizer: Any, messages: list[dict[str, str]], answer: str) -> list[int]:
    """What a reward model scores: the renderer's prompt, then the answer through its end-of-turn
    token, each piece tokenized on its own as the renderer does (training, serving, best-of-n)."""
    head, text, _ = renderer.preference_texts(messages, answer, "")
    return (
        tokenizer(head, add_special_tokens=False)["input_ids"]
        + tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def _pairs(cfg: RewardModelConfig, renderer: Any, tokenizer: Any) -> list[dict[str, list[int]]]:
    if not cfg.data.is_file():
        raise ConfigError(f"no data file at {cfg.data}")
    out = []
    for n, line in enumerate(cfg.data.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            messages = r["input"]["messages"]
            good, bad = r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"]
            chosen, rejected = (reward_input_ids(renderer, tokenizer, messages, a) for a in (good, bad))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ConfigError(
                f"{cfg.data}:{n}: not a preference pair ({type(exc).__name__}: {exc})"
            ) from None
        out.append({"chosen_ids": chosen[-cfg.max_length :], "rejected_ids": rejected[-cfg.max_length :]})
    if len(out) < 2:
        raise ConfigError(f"{cfg.data}: a reward model needs at least 2 preference pairs (one held out)")
    return out


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Train on the pairs not held out, score the held-out ones, write ``cfg.out``; return metrics."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from convtune.models import resolve_model
    from convtune.training.artifacts import write_json_atomic
    from convtune.training.trainer import device_and_precision

    run_cfg, tokenizer, renderer = load_run_parts(cfg.run)
    pairs = _pairs(cfg, renderer, tokenizer)  # data problems before any weights load
    random.Random(cfg.seed).shuffle(pairs)
    n_test = max(1, round(len(pairs) * cfg.held_out))
    test, train = pairs[:n_test], pairs[n_test:]
    device, dtype, bf16, fp16 = device_and_precision(cfg.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(run_cfg["model"]["name"]), num_labels=1, dtype=dtype, trust_remote_code=False
    )
    model.config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    args = RewardConfig(**trl_args(cfg.out, cfg, device, bf16, fp16))
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type="SEQ_CLS"
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        processing_class=tokenizer,
        peft_config=lora,
    )
    t0 = time.time()
    trainer.train()
    accuracy = pairwise_accuracy(trainer.model, test, device=trainer.args.device)
    out = cfg.out
    shutil.rmtree(out / "adapter", ignore_errors=True)
    trainer.model.save_pretrained(out / "adapter", safe_serialization=True)
    (out / "adapter" / "README.md").unlink(missing_ok=True)
    shutil.copytree(cfg.run / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    for name in ("config.json", "tasks.json"):  # registrable with `convtune models add` (as a scorer)
        shutil.copy2(cfg.run / name, out / name)
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "kind": "reward_model",
        "base": run_cfg["model"]["name"],
        "data": str(cfg.data),
        "train_pairs": len(train),
        "held_out_pairs": len(test),
        "max_length": cfg.max_length,  # sequences keep their last max_length tokens (scoring too)
        "pairwise_accuracy": accuracy,
        "steps": trainer.state.global_step,
        "final_loss": round(float(history[-1]["loss"]), 5) if history else None,
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(out / "metrics.json", metrics)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return metrics


def score(model: Any, sequences: list[list[int]], *, device: Any = "cpu") -> list[float]:
    """Scalar rewards of token sequences (one forward each: no padding effects)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for ids in sequences:
            logits = model(input_ids=torch.tensor([ids], device=device)).logits
            out.append(float(logits[0, 0]))
    return out


def pairwise_accuracy(model: Any, pairs: list[dict[str, list[int]]], *, device: Any = "cpu") -> float:
    """Share of pairs whose preferred sequence gets the higher reward (ties count half)."""
    good = score(model, [p["chosen_ids"] for p in pairs], device=device)
    bad = score(model, [p["rejected_ids"] for p in pairs], device=device)
    return sum(1.0 if g > b else 0.5 if g == b else 0.0 for g, b in zip(good, bad, strict=True)) / len(pairs)


def is_reward_model(folder: Path) -> bool:
    """A run directory written by :func:`train_reward_model` (it scores; it does not generate)."""
    try:
        return json.loads((folder / "metrics.json").read_text()).get("kind") == "reward_model"
    except (OSError, ValueError):
        return False


class RewardScorer:
    """A loaded reward model: ``score(token sequences) -> rewards``. Not thread-safe (engine thread)."""

    def __init__(self, folder: Path):
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from convtune.models import resolve_model

        run_cfg = json.loads((folder / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model(run_cfg["model"]["name"]), num_labels=1, trust_remote_code=False
        )
        base.config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.model = PeftModel.from_pretrained(base, folder / "adapter").eval()
        metrics = json.loads((folder / "metrics.json").read_text())
        self.max_length = int(metrics.get("max_length") or 1024)  # as in training: the last tokens

    def score(self, sequences: list[list[int]]) -> list[float]:
        return score(self.model, [ids[-self.max_length :] for ids in sequences])
