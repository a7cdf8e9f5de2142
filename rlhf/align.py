"""DPO and KTO on top of an SFT adapter (TRL), with the renderer's exact prompt text.

    from rlhf.align import AlignConfig, align
    align(AlignConfig(run="runs/demo/train", data="prefs/preferences.jsonl", out="runs/demo/dpo"))

The policy is the SFT run's LoRA adapter, trained further; the reference is
the same adapter frozen (TRL copies it into a second, frozen "ref" adapter of
the same PEFT model: no second copy of the base model in memory). Prompts and
answers are rendered by :meth:`convtune.renderer.Renderer.preference_texts`, so
the tokens DPO/KTO see are the tokens the server generates. The output is a
run directory like any other (``adapter/``, ``tokenizer/``, ``config.json``,
``tasks.json``, ``metrics.json``, ``loss.png``): ``convtune models add`` serves it.

Data: DPO reads preference JSONL (``convtune feedback export`` or a
``fine-tune`` preference file); KTO reads ``{"prompt", "completion", "label"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convtune.errors import ConfigError
from rlhf.common import load_run_parts, trl_args, write_policy_run


class AlignConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: Path = Field(description="the SFT run directory whose adapter is aligned")
    data: Path = Field(description="preference JSONL (dpo) or KTO JSONL (kto)")
    out: Path = Field(description="the new run directory")
    method: Literal["dpo", "kto"] = "dpo"
    beta: float = Field(0.1, gt=0, le=10)
    epochs: int = Field(1, ge=1, le=50)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(5e-5, gt=0, lt=1)
    batch_size: int = Field(2, ge=1, description="pairs (dpo) or examples (kto) per step")
    max_length: int = Field(1024, ge=64)
    seed: int = 42
    device: str = "auto"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"no data file at {path}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise ConfigError(f"{path} holds no records")
    return rows


def _dataset(cfg: AlignConfig, renderer: Any) -> Any:
    from datasets import Dataset

    rows = _read_jsonl(cfg.data)
    out: dict[str, list[Any]] = {}
    try:
        if cfg.method == "dpo":
            for r in rows:
                good, bad = r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"]
                p, c, rj = renderer.preference_texts(r["input"]["messages"], good, bad)
                for k, v in (("prompt", p), ("chosen", c), ("rejected", rj)):
                    out.setdefault(k, []).append(v)
        else:
            for r in rows:
                p, c, _ = renderer.preference_texts(r["prompt"], r["completion"][0]["content"], "")
                for k, v in (("prompt", p), ("completion", c), ("label", bool(r["label"]))):
                    out.setdefault(k, []).append(v)
    except (KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"{cfg.data}: not {cfg.method} data ({type(exc).__name__}: {exc})") from None
    if cfg.method == "kto" and len(set(out["label"])) < 2:
        raise ConfigError("KTO needs both desirable (label true) and undesirable (label false) examples")
    return Dataset.from_dict(out)


def build_trainer(cfg: AlignConfig) -> Any:
    """The TRL DPO/KTO trainer over the SFT adapter (data checked before weights load)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from convtune.models import resolve_model
    from convtune.training.trainer import device_and_precision

    run = cfg.run
    run_cfg, tokenizer, renderer = load_run_parts(run)
    dataset = _dataset(cfg, renderer)  # data problems surface before any weights load
    device, dtype, bf16, fp16 = device_and_precision(cfg.device)
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(run_cfg["model"]["name"]), dtype=dtype, trust_remote_code=False
    )
    model = PeftModel.from_pretrained(base, run / "adapter", is_trainable=True)
    common = {**trl_args(cfg.out, cfg, device, bf16, fp16), "beta": cfg.beta}
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model, args=DPOConfig(**common), train_dataset=dataset, processing_class=tokenizer
        )
    else:
        from trl import KTOConfig, KTOTrainer

        trainer = KTOTrainer(
            model=model, args=KTOConfig(**common), train_dataset=dataset, processing_class=tokenizer
        )
    return trainer


def align(cfg: AlignConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train; write the aligned run to ``cfg.out``; return its metrics. ``callbacks``: extra
    ``TrainerCallback`` objects (the jobs runner's event publisher). A callback that sets
    ``control.should_training_stop`` ends training early; metrics then say ``stopped: true``
    and nothing is written."""
    trainer = build_trainer(cfg)
    for cb in callbacks:
        trainer.add_callback(cb)
    run, dataset = cfg.run, trainer.train_dataset
    device = "cpu" if trainer.args.use_cpu else str(trainer.args.device)
    t0 = time.time()
    trainer.train()
    if any(getattr(cb, "stop_requested", False) for cb in callbacks):
        return {"stopped": True, "steps": trainer.state.global_step}
    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "method": cfg.method,
        "from_run": str(run),
        "data": str(cfg.data),
        "examples": len(dataset),
        "steps": trainer.state.global_step,
        "beta": cfg.beta,
        "lr": cfg.lr,
        "loss": [[int(h["step"]), round(float(h["loss"]), 5)] for h in history],
        "final_loss": round(float(history[-1]["loss"]), 5) if history else None,
        "reward_accuracy": next(
            (float(h[k]) for h in reversed(history) for k in h if k.endswith("rewards/accuracies")), None
        ),
        "seconds": round(time.time() - t0, 1),
        "device": device,
    }
    write_policy_run(trainer, run, cfg.out, metrics)
    return metrics
