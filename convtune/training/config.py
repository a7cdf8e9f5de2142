"""The training configuration: a small typed schema, a file + CLI-override loader, static checks.

A config is YAML or JSON with seven groups (every key optional, defaults below)::

    model:  {name: smollm2-135m-instruct}
    data:   {train: FILE, validation: FILE | null, validation_fraction: 0.1, format: null, ...}
    tasks:  {names: [summary, action_items, intent, sentiment], files: [], weights: {}, labels: {},
             labels_from_data: true}
    lora:   {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}
    train:  {epochs: 3, max_steps: null, lr: 2.0e-4, batch_size: 1, grad_accum: 8, max_seq_len: 2048, ...}
    predictors: {enabled: true, encoder: all-minilm-l6-v2, tune_encoder: true, min_validation: 10, ...}
    output: {dir: runs/train-<timestamp>, keep_checkpoints: false, max_checkpoints: 2, overwrite: false}

``--set group.key=value`` overrides any key (the value is read as YAML, so
``1e-4``, ``true``, ``[a, b]`` work). Every problem (unknown keys, wrong types,
out-of-range values, missing files, contradictory options) is collected and
raised together as one :class:`TrainConfigError` *before* anything heavy is
imported or loaded. Relative paths are resolved against the current directory;
the resolved config (absolute paths) is what a run stores in ``config.json``.

Label sets: a classification task (``intent``, a task file's classification
tasks) answers with one label of its set. ``tasks.labels: {intent: [a, b, c]}``
gives a set explicitly (``tasks.intent_labels`` is the older spelling of
``labels.intent``). A task without one takes its set from the data
(``tasks.labels_from_data``, on by default): when every label in the train
(+ validation) data is in the task's default set, the default set is kept (the
prompts do not change); otherwise the set is the labels found in the data,
sorted, and the run says so. Fewer than 2 labels in the data, or labels that
differ only in case, spacing or a plural ``s`` (``Billing_Dispute`` vs
``billing_dispute``), are reported before any weights load. A run writes the
resolved sets into ``config.json`` (``tasks.labels``) and ``tasks.json``, so
``convtune evaluate`` and the server rebuild exactly the trained tasks.

This module imports only pydantic and yaml, so ``convtune train --help`` and
config validation stay instant.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from convtune.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"  # == convtune.models.DEFAULT_MODEL (not imported: keeps this light)
CORE_TASKS = ("summary", "action_items", "intent", "sentiment")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)$")


class TrainConfigError(ConfigError):
    """Every problem found in a training config, one per line, each saying what to fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in the training config:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Group):
    name: str = Field(DEFAULT_MODEL, min_length=1, description="packaged model name, local folder or hub id")


class DataSection(_Group):
    train: Path | None = Field(None, description="training conversations (any format `data import` reads)")
    validation: Path | None = Field(None, description="validation conversations; else a split of train")
    validation_fraction: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="share of train held out when no validation file (default: auto, see split_validation)"
    )
    format: str | None = Field(None, description="format of the train file (default: detected)")
    validation_format: str | None = Field(
        None, description="format of the validation file (default: detected)"
    )
    max_transcript_tokens: int | None = Field(
        None, ge=64, description="renderer transcript budget (default: min(1536, max_seq_len - 512))"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N training conversations")
    few_shot: int = Field(
        0, ge=0, le=32,
        description="labelled training conversations retrieved into every prompt as examples, with their "
        "classification-task answers (0: off); the run keeps this example index for evaluation and serving",
    )

    def effective_validation_fraction(self) -> float | None:
        """0 with a validation file; None means "auto" (sized from the data by split_validation)."""
        if self.validation is not None:
            return 0.0
        return self.validation_fraction


class TasksSection(_Group):
    names: list[str] = Field(default_factory=lambda: list(CORE_TASKS), min_length=1)
    files: list[Path] = Field(default_factory=list, description="custom task definition files")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="per-task sampling weight (default 1.0): expected trained pairs per labelled "
        "conversation and epoch; >1 repeats conversations, <1 includes the task less often",
    )
    labels: dict[str, list[str]] = Field(
        default_factory=dict,
        description="label set per classification task (task -> labels); a task not listed takes its "
        "labels from the training data (labels_from_data) or keeps its default set",
    )
    labels_from_data: bool = Field(
        True, description="classification tasks without a label set here take the labels of the training "
        "data when the data uses labels outside the task's default set")
    intent_labels: list[str] | None = Field(None, description="older spelling of labels.intent (kept for "
                                            "existing configs)")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, w in v.items() if not w >= 0 or w != w or w == float("inf")]
        if bad:
            raise ValueError(f"weights must be finite and >= 0 (bad: {', '.join(bad)})")
        return v

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 1.0))

    def label_set(self, name: str) -> list[str] | None:
        """The label set the config gives task ``name`` (``labels``, or ``intent_labels`` for intent)."""
        if name in self.labels:
            return list(self.labels[name])
        if name == "intent" and self.intent_labels is not None:
            return list(self.intent_labels)
        return None


class LoraSection(_Group):
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32, gt=0)
    # 0: PEFT skips the op; a dropout mask over every LoRA input cost 1.30-1.41x the training time
    # here for the same final loss (benchmarks/training_throughput.py)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description='"all-linear" or module names')


class TrainSection(_Group):
    epochs: int = Field(3, ge=1, description="passes over the training conversations (unless max_steps)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    max_tokens_budget: int | None = Field(None, ge=1, description="stop after this many training tokens")
    lr: float = Field(2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    batch_size: int = Field(1, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(8, ge=1, description="micro-batches per optimizer step")
    max_seq_len: int = Field(2048, ge=256, description="longest example in tokens (answers are never cut)")
    seed: int = Field(42, ge=0)
    eval_every: int = Field(50, ge=0, description="evaluate every N steps (0: only at the end)")
    save_every: int = Field(50, ge=1, description="checkpoint every N steps")
    log_every: int = Field(5, ge=1)
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or mps")
    gradient_checkpointing: bool | None = Field(None, description="default: on for CUDA, off elsewhere")
    padding_free: bool = Field(False, description="one flattened sequence per micro-batch (batch_size > 1)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("expected auto, cpu, cuda or mps (pick a GPU with CUDA_VISIBLE_DEVICES)")
        return v

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


class PredictorsSection(_Group):
    """Discriminative predictors for label tasks, chosen per field on validation (convtune.predictors)."""

    enabled: bool = Field(True, description="train an encoder head and choose each label task's predictor")
    encoder: str = Field("all-minilm-l6-v2", min_length=1,
                         description="sentence encoder: packaged default or a sentence-transformers folder")
    tune_encoder: bool = Field(True, description="contrastive tuning of the encoder on the run's labels")
    encoder_epochs: int | None = Field(None, ge=1, le=50,
                                       description="contrastive epochs (default: from the data size, 1-4)")
    encoder_lr: float = Field(5e-5, gt=0, lt=1)
    label_names: bool = Field(True, description="each trained label's name, underscores as spaces "
                              "(pin_reset_request: 'pin reset request'), is one more example of it for "
                              "the encoder and heads; turn off for opaque label codes")
    min_validation: int = Field(10, ge=1, description="labelled validation examples a field needs to choose "
                                "between predictors; fewer: the default is used and the run says so")
    default: Literal["head", "knn", "lm", "ensemble"] = Field(
        "head", description="predictor used when validation is too small to choose")
    lm_candidates: bool = Field(True, description="score the tuned LM (and the ensemble) on validation too")
    refit: Literal["encoder", "heads", "none"] = Field(
        "encoder", description="after choosing, serve from train + validation: 'encoder' re-tunes the "
        "encoder and refits the heads on both, 'heads' refits only the heads and the k-NN bank on the "
        "validated encoder (seconds instead of minutes), 'none' serves what validation scored")

    @field_validator("refit", mode="before")
    @classmethod
    def _refit(cls, v: Any) -> Any:
        return {True: "encoder", False: "none"}.get(v, v) if isinstance(v, bool) else v


class OutputSection(_Group):
    dir: Path | None = Field(None, description="run directory (default: runs/train-<timestamp>)")
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ after a successful run")
    max_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept during training")
    overwrite: bool = Field(False, description="replace an existing run directory")


class TrainConfig(_Group):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    tasks: TasksSection = Field(default_factory=TasksSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    predictors: PredictorsSection = Field(default_factory=PredictorsSection)
    output: OutputSection = Field(default_factory=OutputSection)
    # Problems found by load_config(defer=True); a config carrying any is never trained.
    _deferred: list[str] = PrivateAttr(default_factory=list)

    @property
    def deferred_problems(self) -> list[str]:
        return list(self._deferred)

    # ---- derived values -------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        if self.output.dir is None:
            raise ConfigError("output.dir is not set (load the config with load_config)")
        return self.output.dir

    @property
    def max_transcript_tokens(self) -> int:
        if self.data.max_transcript_tokens is not None:
            return self.data.max_transcript_tokens
        return max(128, min(1536, self.train.max_seq_len - 512))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys a resumed run may change: they do not alter what is trained.
RESUME_MUTABLE = {
    "train.log_every", "train.eval_every", "train.save_every", "train.device",
    "output.keep_checkpoints", "output.max_checkpoints", "output.overwrite", "output.dir",
}


# ---- loading --------------------------------------------------------------------


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None, problems: list[str]) -> dict:
    """``["train.lr=1e-4", "tasks.names=[intent]"]`` -> nested dict; malformed items become problems."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
            problems.append(f"--set {item!r}: expected GROUP.KEY=VALUE, e.g. --set train.lr=1e-4")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


def read_config_file(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(f"config file not found: {path}")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a mapping of groups (model, data, tasks, ...)")
        return {}
    return data


# Names people bring from Hugging Face TrainingArguments / PEFT.
_ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "gradient_accumulation_steps": "grad_accum",
    "per_device_train_batch_size": "batch_size", "max_length": "max_seq_len", "max_seq_length": "max_seq_len",
    "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_r": "r", "rank": "r", "output_dir": "dir",
    "save_steps": "save_every", "eval_steps": "eval_every", "logging_steps": "log_every",
}


def _did_you_mean(key: str, valid: list[str]) -> str | None:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    alias = difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.75)
    if alias and _ALIASES[alias[0]] in valid:
        return _ALIASES[alias[0]]
    return None


def _valid_keys(loc: tuple) -> list[str]:
    model: Any = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def format_validation_error(exc: ValidationError) -> list[str]:
    """Pydantic errors -> one readable line each, with a did-you-mean for unknown keys."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "config"
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(loc)
            close = _did_you_mean(str(loc[-1]), valid)
            suggestion = ".".join([*map(str, loc[:-1]), close]) if close else ""
            hint = f"; did you mean {suggestion!r}?" if close else ""
            lines.append(f"{where}: unknown key{hint} (valid: {', '.join(valid)})")
        elif err["type"] == "model_type":
            lines.append(f"{where}: expected a mapping of keys, got {err.get('input')!r}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            lines.append(f"{where}: {msg} (got {err.get('input')!r})")
    return lines


def _abs(p: Path | None) -> Path | None:
    return None if p is None else Path(p).expanduser().resolve()


def load_config(
    path: str | Path | None = None,
    *,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    resume: bool = False,
    check_files: bool = True,
    defer: bool = False,
) -> TrainConfig:
    """Build the resolved config: defaults < file < ``--set`` overrides < direct ``flags``.

    ``flags`` maps dotted keys to values (``{"data.train": "x.jsonl"}``); ``None``
    values are ignored. With ``resume=True`` and no config file, the run
    directory's stored ``config.json`` is the base, and keys that would change
    what is trained may not differ from it.

    With ``defer=True`` problems are not raised here but kept on the config
    (``deferred_problems``): :func:`convtune.training.train` then reports them
    together with the task and data problems, before loading anything.

    Raises:
        TrainConfigError: listing every problem found (unless ``defer``).
    """
    problems: list[str] = []
    raw: dict = {}
    if path is not None:
        raw = read_config_file(Path(path), problems)
    raw = _deep_merge(raw, parse_overrides(overrides, problems))
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(raw, key, str(value) if isinstance(value, Path) else value)

    stored: dict | None = None
    out_dir = (raw.get("output") or {}).get("dir") if isinstance(raw.get("output"), dict) else None
    if resume:
        if out_dir is None:
            problems.append("--resume needs the run to continue: pass --out RUN_DIR")
        else:
            stored_path = Path(str(out_dir)).expanduser() / "config.json"
            if stored_path.is_file():
                try:
                    stored = json.loads(stored_path.read_text())
                except (OSError, json.JSONDecodeError) as exc:
                    problems.append(f"{stored_path}: unreadable ({exc}); cannot resume this run")
                if stored is not None and path is None:
                    raw = _deep_merge(stored, raw)

    cfg, schema_problems = _validate_by_group(raw)
    problems += schema_problems

    # Resolve paths and defaults.
    cfg.data.train = _abs(cfg.data.train)
    cfg.data.validation = _abs(cfg.data.validation)
    cfg.tasks.files = [_abs(f) for f in cfg.tasks.files]  # type: ignore[misc]
    if cfg.output.dir is None:
        cfg.output.dir = Path("runs") / f"train-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    cfg.output.dir = _abs(cfg.output.dir)
    model_path = Path(cfg.model.name).expanduser()
    packaged = cfg.model.name.strip().lower() == DEFAULT_MODEL
    if not packaged and (model_path.exists() or cfg.model.name.startswith((".", "/", "~"))):
        cfg.model.name = str(model_path.resolve())

    problems += check_config(cfg, check_files=check_files)
    problems += check_run_dir(cfg, resume=resume)
    if resume and stored is not None:
        problems += _resume_differences(stored, cfg)
    if problems and not defer:
        raise TrainConfigError(problems)
    cfg._deferred = problems
    return cfg


def _validate_by_group(raw: dict) -> tuple[TrainConfig, list[str]]:
    """Validate; a group with errors falls back to its defaults so the other groups (files,
    tasks, data) can still be checked and every problem reported in one go."""
    try:
        return TrainConfig.model_validate(raw), []
    except ValidationError as exc:
        problems = format_validation_error(exc)
    good: dict[str, Any] = {}
    for name, field in TrainConfig.model_fields.items():
        group = raw.get(name)
        if not isinstance(group, dict):
            continue
        section = field.annotation
        kept = {}
        for key, value in group.items():
            try:
                section.model_validate({key: value})
                kept[key] = value
            except ValidationError:
                pass
        good[name] = kept
    return TrainConfig.model_validate(good), problems


def check_config(cfg: TrainConfig, *, check_files: bool = True) -> list[str]:
    """Cross-field and file checks pydantic cannot express. Returns problems (with fixes)."""
    problems: list[str] = []
    d, t, tr = cfg.data, cfg.tasks, cfg.train
    if d.train is None:
        problems.append("data.train: no training data; pass --train FILE or set data.train in the config")
    if d.validation is not None and d.validation_fraction:
        problems.append(
            "data.validation and data.validation_fraction are both set; keep one "
            "(a validation file replaces the split)"
        )
    if check_files:
        for key, p in (("data.train", d.train), ("data.validation", d.validation)):
            if p is not None and not p.is_file():
                problems.append(f"{key}: file not found: {p}")
        for i, f in enumerate(t.files):
            if not f.is_file():
                problems.append(f"tasks.files.{i}: file not found: {f}")
        model_path = Path(cfg.model.name)
        if model_path.is_absolute() and not (model_path / "config.json").is_file():
            problems.append(
                f"model.name: {model_path} is not a Hugging Face model folder (no config.json); "
                f"use {DEFAULT_MODEL!r}, a model folder or a hub id"
            )
    dupes = sorted({n for n in t.names if t.names.count(n) > 1})
    if dupes:
        problems.append(f"tasks.names: listed more than once: {', '.join(dupes)}")
    for name in t.weights:
        if name not in t.names:
            problems.append(f"tasks.weights.{name}: not a selected task (selected: {', '.join(t.names)})")
    for name in t.labels:
        if name not in t.names:
            problems.append(f"tasks.labels.{name}: not a selected task (selected: {', '.join(t.names)})")
    if t.intent_labels is not None and "intent" in t.labels and list(t.labels["intent"]) != t.intent_labels:
        problems.append("tasks.intent_labels and tasks.labels.intent are both set and differ; keep "
                        "tasks.labels.intent (intent_labels is its older spelling)")
    if t.names and all(t.weight(n) == 0 for n in t.names):
        problems.append("tasks.weights: every selected task has weight 0, so nothing would be trained")
    if tr.padding_free and tr.batch_size == 1:
        problems.append("train.padding_free needs train.batch_size > 1 (with 1 there is no padding to save)")
    if cfg.max_transcript_tokens >= tr.max_seq_len:
        problems.append(
            f"data.max_transcript_tokens ({cfg.max_transcript_tokens}) must be below train.max_seq_len "
            f"({tr.max_seq_len}) to leave room for instructions and answers"
        )
    return problems


def check_run_dir(cfg: TrainConfig, *, resume: bool) -> list[str]:
    """The run directory must be new (or ``overwrite``), or an unfinished run when resuming."""
    run = cfg.output.dir
    if run is None:
        return []
    if run.exists() and not run.is_dir():
        return [f"output.dir: {run} exists and is not a directory"]
    finished = (run / "metrics.json").is_file()
    if resume:
        if not run.is_dir():
            return [f"--resume: {run} does not exist; nothing to resume (drop --resume to start a new run)"]
        if finished:
            return [f"--resume: {run} is a finished run; start a new run with another --out"]
        return []
    if run.is_dir() and any(run.iterdir()) and not cfg.output.overwrite:
        hint = "continue it with --resume" if not finished else "it holds a finished run"
        return [
            f"output.dir: {run} already exists ({hint}); choose another --out, or set "
            "output.overwrite=true to replace it"
        ]
    return []


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "weights":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _resume_differences(stored: dict, cfg: TrainConfig) -> list[str]:
    try:
        old = TrainConfig.model_validate(stored).to_json()
    except ValidationError:
        return ["the run's stored config.json no longer validates; start a new run (--out elsewhere)"]
    a, b = _flatten(old), _flatten(cfg.to_json())
    problems = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MUTABLE or a.get(key) == b.get(key):
            continue
        if key.startswith("tasks.labels.") and b.get(key) is None and cfg.tasks.labels_from_data:
            continue  # resolved from the same data again (a changed stream is refused at resume)
        problems.append(
            f"{key}: {b.get(key)!r} differs from the run being resumed ({a.get(key)!r}); a resumed run keeps "
            "its config: drop the change, or start a new run with another --out"
        )
    return problems
