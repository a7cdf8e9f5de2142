"""Multi-task LoRA SFT (``convtune train``): config, dataset, trainer, run directory.

Public API (imported lazily, so ``import convtune.training`` stays light)::

    from convtune.training import load_config, train, load_run
    cfg = load_config("configs/demo.yaml", overrides=["train.lr=1e-4"])
    result = train(cfg)                      # -> RunResult (run_dir, steps, metrics)
    model, tokenizer, renderer, task_names, few_shot = load_run(result.run_dir)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convtune.training.artifacts import RUN_FILES, LoadedRun, load_run
    from convtune.training.config import TrainConfig, TrainConfigError, load_config
    from convtune.training.trainer import RunResult, TrainingInterrupted, prepare, train

_EXPORTS = {
    "TrainConfig": "convtune.training.config",
    "TrainConfigError": "convtune.training.config",
    "load_config": "convtune.training.config",
    "train": "convtune.training.trainer",
    "prepare": "convtune.training.trainer",
    "RunResult": "convtune.training.trainer",
    "TrainingInterrupted": "convtune.training.trainer",
    "load_run": "convtune.training.artifacts",
    "LoadedRun": "convtune.training.artifacts",
    "RUN_FILES": "convtune.training.artifacts",
}

__all__ = [
    "RUN_FILES", "LoadedRun", "RunResult", "TrainConfig", "TrainConfigError", "TrainingInterrupted",
    "load_config", "load_run", "prepare", "train",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'convtune.training' has no attribute {name!r}")
