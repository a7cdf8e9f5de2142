"""Online RL on top of an SFT adapter: TRL's RLOO with the task's own metric and a reward model as rewards.

    from rlhf.online import OnlineConfig, online
    online(OnlineConfig(run="runs/demo/train", data="runs/demo/data/train.jsonl", out="runs/demo/rloo",
                        task="summary", reward_model="runs/feedback/reward", max_steps=8))

For each labelled conversation the policy (the SFT run's adapter, trained
further) samples ``num_generations`` answers to the task's prompt; each answer
is rewarded by

* the task's primary metric against the gold label (``metric_weight``: ROUGE-L
  of a summary, exact label of an intent, F1 of action items; an answer that
  does not parse scores 0), and/or
* a tenant's reward model (``reward_model``, ``rlhf.reward``; ``reward_model_weight``),
  scored on the same tokens best-of-n serving scores;

RLOO (REINFORCE leave-one-out: each answer's advantage is its reward minus the
mean of the others for the same prompt) raises the likelihood of the better
ones. ``beta`` > 0 adds a KL penalty to the reference, the SFT adapter frozen
(TRL copies it into a "ref" adapter of the same model: no second model copy).
Prompts are the renderer's text; TRL tokenizes each in one piece, which gives the
renderer's ids because its pieces meet at the template's special tokens (tested). The output
is a run directory like any other (``convtune models add`` serves it, ``convtune
evaluate`` scores it).

CPU sizing: every step generates ``prompts_per_step * num_generations`` answers
with ``model.generate`` and then trains on them; with the 135M model and ~500-token
transcripts that is tens of seconds per step on 2 cores, so keep runs to a few
dozen steps (``max_steps``) on CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from convtune.errors import ConfigError
from rlhf.common import load_run_parts, trl_args, write_policy_run


class OnlineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Path = Field(description="the SFT run directory whose adapter is trained further")
    data: Path = Field(description="labelled conversations (any format `convtune data import` reads)")
    out: Path = Field(description="the new run directory")
    task: str = Field("summary", description="the task whose prompts are sampled and rewarded")
    reward_model: Path | None = Field(None, description="a reward model run (convtune reward-model)")
    metric_weight: float = Field(1.0, ge=0, description="weight of the task metric vs the gold label")
    reward_model_weight: float = Field(1.0, ge=0)
    num_generations: int = Field(4, ge=2, le=16, description="answers sampled per prompt")
    prompts_per_step: int = Field(1, ge=1)
    max_completion_length: int = Field(96, ge=1)
    temperature: float = Field(0.8, gt=0, le=2)
    beta: float = Field(0.0, ge=0, description="KL penalty to the frozen SFT adapter")
    epochs: int = Field(1, ge=1, le=50)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-5, gt=0, lt=1)
    seed: int = 42
    device: str = "auto"

    @property
    def batch_size(self) -> int:
        """Answers per optimisation step (TRL's per-device batch): whole groups of one prompt."""
        return self.prompts_per_step * self.num_generations

    @model_validator(mode="after")
    def _some_reward(self) -> OnlineConfig:
        uses_rm = self.reward_model is not None and self.reward_model_weight > 0
        if self.metric_weight == 0 and not uses_rm:
            raise ValueError("no reward: give metric_weight > 0 and/or a reward_model")
        return self


def _prompts(cfg: OnlineConfig, renderer: Any) -> tuple[Any, Any]:
    """(task, dataset of prompt text + the messages and gold each reward needs)."""
    from datasets import Dataset

    from convtune.data import load_conversations
    from convtune.evaluation.evaluate import resolve_tasks
    from convtune.renderer import TaskTurn

    if not cfg.data.is_file():
        raise ConfigError(f"no data file at {cfg.data}")
    (task,) = resolve_tasks([cfg.task], run_dir=cfg.run)
    convs = [c for c in load_conversations(cfg.data)[1] if task.has_label(c) or cfg.metric_weight == 0]
    if not convs:
        raise ConfigError(
            f"{cfg.data}: no conversation has a {cfg.task!r} label (the metric reward needs one)"
        )
    rows: dict[str, list[Any]] = {"prompt": [], "messages": [], "gold": []}
    for c in convs:
        messages = renderer.messages(c, [TaskTurn(task.instruction)])[0]
        rows["prompt"].append(renderer.preference_texts(messages, "", "")[0])
        rows["messages"].append(json.dumps(messages))
        rows["gold"].append(json.dumps(task.gold(c) if task.has_label(c) else None))
    return task, Dataset.from_dict(rows)


def metric_reward(task: Any) -> Any:
    """Reward function: the task's primary metric of each answer against its gold label."""

    def task_metric(completions: list[str], gold: list[str], **_: Any) -> list[float]:
        out = []
        for text, g in zip(completions, gold, strict=True):
            scores = task.score([task.parse(text)], [json.loads(g)])
            out.append(float(scores.get(task.primary_metric) or 0.0))
        return out

    return task_metric


def reward_model_reward(folder: Path, renderer: Any, tokenizer: Any) -> Any:
    """Reward function: a reward model's score of each answer (the tokens best-of-n serving scores)."""
    from rlhf.reward import RewardScorer, reward_input_ids

    scorer = RewardScorer(folder)

    def reward_model(completions: list[str], messages: list[str], **_: Any) -> list[float]:
        seqs = [
            reward_input_ids(renderer, tokenizer, json.loads(m), text)
            for text, m in zip(completions, messages, strict=True)
        ]
        return scorer.score(seqs)

    return reward_model


def build_trainer(cfg: OnlineConfig) -> Any:
    """TRL's RLOOTrainer over the SFT adapter (data and reward model checked before weights load)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import RLOOConfig, RLOOTrainer

    from convtune.models import resolve_model
    from convtune.training.trainer import device_and_precision
    from rlhf.reward import is_reward_model

    run_cfg, tokenizer, renderer = load_run_parts(cfg.run)
    if cfg.reward_model is not None and not is_reward_model(cfg.reward_model):
        raise ConfigError(f"{cfg.reward_model} is not a reward model (convtune reward-model writes one)")
    task, dataset = _prompts(cfg, renderer)
    funcs, weights = [], []
    if cfg.metric_weight > 0:
        funcs.append(metric_reward(task))
        weights.append(cfg.metric_weight)
    if cfg.reward_model is not None and cfg.reward_model_weight > 0:
        funcs.append(reward_model_reward(cfg.reward_model, renderer, tokenizer))
        weights.append(cfg.reward_model_weight)
    device, dtype, bf16, fp16 = device_and_precision(cfg.device)
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(run_cfg["model"]["name"]), dtype=dtype, trust_remote_code=False
    )
    model = PeftModel.from_pretrained(base, cfg.run / "adapter", is_trainable=True)
    args = RLOOConfig(
        **trl_args(cfg.out, cfg, device, bf16, fp16),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        reward_weights=weights,
        steps_per_generation=1,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return RLOOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer
    )


def online(cfg: OnlineConfig) -> dict[str, Any]:
    """Train; write the run to ``cfg.out``; return its metrics (mean reward per step included)."""
    trainer = build_trainer(cfg)
    device = "cpu" if trainer.args.use_cpu else str(trainer.args.device)
    t0 = time.time()
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "method": "rloo",
        "from_run": str(cfg.run),
        "data": str(cfg.data),
        "task": cfg.task,
        "reward_model": str(cfg.reward_model) if cfg.reward_model else None,
        "prompts": len(trainer.train_dataset),
        "steps": trainer.state.global_step,
        "beta": cfg.beta,
        "lr": cfg.lr,
        "loss": [[int(h["step"]), round(float(h["loss"]), 5)] for h in history],
        "reward": [[int(h["step"]), round(float(h["reward"]), 5)] for h in history if "reward" in h],
        "final_loss": round(float(history[-1]["loss"]), 5) if history else None,
        "seconds": round(time.time() - t0, 1),
        "device": device,
    }
    write_policy_run(trainer, cfg.run, cfg.out, metrics)
    return metrics
