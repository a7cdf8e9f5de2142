"""What DPO/KTO and the reward model share: a run's parts, and TRL's training arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from convtune.errors import ConfigError


def load_run_parts(run: Path) -> tuple[dict[str, Any], Any, Any]:
    """(config.json, tokenizer, renderer) of a finished run; ConfigError when it is not one."""
    from transformers import AutoTokenizer

    from convtune.renderer import Renderer

    for need in ("adapter", "tokenizer", "config.json", "tasks.json"):
        if not (run / need).exists():
            raise ConfigError(f"{run} is not a finished training run (missing {need})")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    renderer = Renderer.from_settings(tokenizer, json.loads((run / "tasks.json").read_text())["renderer"])
    return json.loads((run / "config.json").read_text()), tokenizer, renderer


def trl_args(out: Path, cfg: Any, device: str, bf16: bool, fp16: bool) -> dict[str, Any]:
    """Arguments every TRL trainer here takes: precision from the device (fp32 on CPU), no
    gradient checkpointing, no checkpoints (runs are short), every step logged."""
    return dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=cfg.seed,
        disable_tqdm=True,
        **({"max_length": cfg.max_length} if hasattr(cfg, "max_length") else {}),
    )


def write_policy_run(trainer: Any, run: Path, out: Path, metrics: dict[str, Any]) -> None:
    """Write a trained policy (the PEFT model's "default" adapter; TRL's frozen "ref" copy is left
    out) as a run directory like ``convtune train`` writes: servable (``convtune models add``) and
    loadable by ``convtune evaluate``. ``metrics.json`` (with a ``loss`` curve) is written last."""
    from convtune.training.artifacts import write_json_atomic
    from convtune.training.plot import plot_loss

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp, selected_adapters=["default"], safe_serialization=True)
    adapter_src = tmp / "default" if (tmp / "default").is_dir() else tmp
    shutil.rmtree(out / "adapter", ignore_errors=True)
    shutil.copytree(adapter_src, out / "adapter", ignore=shutil.ignore_patterns("README.md"))
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    for name in ("config.json", "tasks.json"):
        shutil.copy2(run / name, out / name)
    curve = [tuple(x) for x in metrics["loss"]]
    plot_loss(out / "loss.png", curve, [], title=f"{metrics['method']}: {run.name}")
    write_json_atomic(out / "metrics.json", metrics)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
