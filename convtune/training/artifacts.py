"""The run directory contract and ``load_run``.

A finished run directory holds exactly::

    adapter/         adapter_model.safetensors, adapter_config.json   (PEFT LoRA)
    tokenizer/       tokenizer.json, tokenizer_config.json, chat_template.jinja
    config.json      the resolved training config (absolute paths)
    tasks.json       task names, instructions, label sets + the renderer's system prompt and budgets
    metrics.json     loss histories, tokens/s, pairs/s, steps, wall time, data stats,
                     the predictor chosen per label task (written last)
    predictors/      label tasks' encoder head, k-NN bank and selection.json (convtune.predictors)
    loss.png         train (and eval) loss per step
    checkpoints/     only while training, or when output.keep_checkpoints is true

``metrics.json`` is written last: its presence means the run finished.
Evaluation and serving rebuild the exact prompt pipeline with :func:`load_run`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from convtune.errors import ConfigError
from convtune.training.checkpoints import write_json_atomic
from convtune.training.config import TrainConfig

CHECKPOINTS = "checkpoints"
EXAMPLES = "examples"  # few-shot example index of a run trained with data.few_shot (optional)
RUN_FILES = ("adapter", "tokenizer", "config.json", "tasks.json", "metrics.json", "loss.png")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json")


def write_config(run: Path, cfg: TrainConfig) -> None:
    write_json_atomic(run / "config.json", cfg.to_json())


def tasks_payload(tasks: list[Any], renderer: Any, cfg: TrainConfig,
                  few_shot_tasks: list[str] | None = None) -> dict[str, Any]:
    from convtune.training.taskset import task_record

    return {
        "tasks": [task_record(t) for t in tasks],
        "weights": {t.name: cfg.tasks.weight(t.name) for t in tasks},
        "task_files": [str(f) for f in cfg.tasks.files],
        "intent_labels": cfg.tasks.intent_labels,
        "labels": dict(cfg.tasks.labels),  # every classification task's label set, as trained
        "renderer": renderer.settings(),
        "max_seq_len": cfg.train.max_seq_len,
        # few-shot: K examples retrieved from RUN_DIR/examples into every prompt, for these tasks
        "few_shot": {"k": cfg.data.few_shot, "tasks": few_shot_tasks, "index": EXAMPLES}
        if few_shot_tasks else None,
    }


def _replace_dir(tmp: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _save_adapter(trainer: Any, run: Path) -> None:
    tmp = run / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp, safe_serialization=True)
    for extra in tmp.iterdir():  # PEFT adds a model card (README.md); the contract is the two files
        if extra.name not in ADAPTER_FILES:
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    missing = [f for f in ADAPTER_FILES if not (tmp / f).is_file()]
    if missing:
        raise RuntimeError(f"PEFT did not write {missing} into {tmp}")
    _replace_dir(tmp, run / "adapter")


def _save_examples(src: Path, run: Path) -> None:
    tmp = run / ".examples.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    _replace_dir(tmp, run / EXAMPLES)


def _save_tokenizer(tokenizer: Any, run: Path) -> None:
    tmp = run / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    if not (tmp / "chat_template.jinja").is_file() and getattr(tokenizer, "chat_template", None):
        (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    _replace_dir(tmp, run / "tokenizer")


def _histories(log_history: list[dict[str, Any]]) -> tuple[list[list[float]], list[list[float]]]:
    train, evals = [], []
    for h in log_history:
        if "loss" in h and "step" in h:
            train.append([int(h["step"]), round(float(h["loss"]), 5)])
        if "eval_loss" in h and "step" in h:
            evals.append([int(h["step"]), round(float(h["eval_loss"]), 5)])
    return train, evals


def write_serving_files(run: Path, cfg: TrainConfig, *, tokenizer: Any, renderer: Any,
                        tasks: list[Any]) -> None:
    """Tokenizer and tasks.json at the start of a run, so any complete checkpoint's adapter can be
    served with them while training goes on (the jobs API exposes checkpoints as models)."""
    _save_tokenizer(tokenizer, run)
    write_json_atomic(run / "tasks.json", tasks_payload(tasks, renderer, cfg))


def finalize_run_dir(run: Path, cfg: TrainConfig, *, trainer: Any, tokenizer: Any, renderer: Any,
                     tasks: list[Any], counters: Any, plan: dict[str, Any], resumed_from: int | None,
                     device: str, dtype: str, wall_seconds: float, trainable_params: int,
                     total_params: int, examples_dir: Path | None = None,
                     few_shot_tasks: list[str] | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write adapter, tokenizer, examples/ (few-shot runs), tasks.json, loss.png and (last)
    metrics.json; drop checkpoints."""
    from convtune.training.plot import plot_loss

    state = trainer.state
    _save_adapter(trainer, run)
    _save_tokenizer(tokenizer, run)
    if examples_dir is not None:
        _save_examples(examples_dir, run)
    write_json_atomic(run / "tasks.json", tasks_payload(tasks, renderer, cfg,
                                                        few_shot_tasks if examples_dir is not None else None))
    train_loss, eval_loss = _histories(state.log_history)
    sessions = [*counters.sessions, counters.session_record(state.global_step)]
    # Session wall times exclude Python start-up and data preparation; the run's wall time includes
    # this session's preparation too.
    prior_wall = sum(s["wall_seconds"] for s in counters.sessions)
    step_s = counters.step_seconds
    metrics = {
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": resumed_from,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "final_train_loss": train_loss[-1][1] if train_loss else None,
        "final_eval_loss": eval_loss[-1][1] if eval_loss else None,
        "tokens": counters.tokens,
        "pairs": counters.pairs,
        "train_seconds": round(step_s, 2),
        "tokens_per_second": round(counters.tokens / step_s, 1) if step_s > 0 else None,
        "pairs_per_second": round(counters.pairs / step_s, 3) if step_s > 0 else None,
        "wall_seconds": round(prior_wall + wall_seconds, 2),
        "sessions": sessions,
        "device": device,
        "dtype": dtype,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "data": plan,
        **(extra or {}),
    }
    title = f"{cfg.model.name.split('/')[-1]} LoRA r={cfg.lora.r}, {state.global_step} steps"
    plot_loss(run / "loss.png", [tuple(x) for x in train_loss], [tuple(x) for x in eval_loss], title=title)
    write_json_atomic(run / "metrics.json", metrics)
    if not cfg.output.keep_checkpoints:
        shutil.rmtree(run / CHECKPOINTS, ignore_errors=True)
    return metrics


class LoadedRun(NamedTuple):
    model: Any
    tokenizer: Any
    renderer: Any
    task_names: list[str]
    few_shot: dict[str, Any] | None = None  # {"k", "tasks", "index"} of a run trained with data.few_shot


def load_run(run_dir: str | Path, *, device: str = "auto") -> LoadedRun:
    """``(model_with_adapter, tokenizer, renderer, task_names)`` of a finished run, model in eval mode.

    The renderer is rebuilt with the run's system prompt and budgets, so
    prompts are token-for-token those the adapter was trained on.

    Raises:
        ConfigError: the folder is not a finished run.
        ModelNotFoundError: the base model is not available on this machine.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convtune.models import pick_device, pick_dtype, resolve_model
    from convtune.renderer import Renderer

    run = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run / f).exists()]
    if missing:
        raise ConfigError(f"{run} is not a finished training run (missing: {', '.join(missing)})")
    cfg = json.loads((run / "config.json").read_text())
    info = json.loads((run / "tasks.json").read_text())
    device = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer", trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(cfg["model"]["name"]), dtype=pick_dtype(device), trust_remote_code=False
    )
    with warnings.catch_warnings():  # PEFT reads transformers' renamed gradient_checkpointing property
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*",
                                category=FutureWarning)
        model = PeftModel.from_pretrained(base, run / "adapter").to(device)
    model.eval()
    renderer = Renderer.from_settings(tokenizer, info["renderer"])
    few_shot = info.get("few_shot")
    if few_shot and not (run / few_shot["index"]).is_dir():
        raise ConfigError(f"{run} was trained with few-shot examples but its example index "
                          f"({few_shot['index']}/) is missing")
    return LoadedRun(model, tokenizer, renderer, [t["name"] for t in info["tasks"]], few_shot)
