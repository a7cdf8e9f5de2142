"""``train(config) -> RunResult``: multi-task LoRA SFT with TRL's SFTTrainer + PEFT.

Order of work, so that mistakes cost nothing:

1. check the config, resolve the tasks, read and validate the data (every
   label through ``Task.validate_label``), split validation: all problems are
   raised together before anything heavy is loaded;
2. load the tokenizer, render and tokenize the examples (``input_ids`` +
   ``assistant_masks``, the renderer's loss mask), fit them into
   ``max_seq_len`` without cutting an answer;
3. only then load the weights and train: precision from the device (fp32 on
   CPU, bf16 on CUDA), gradient checkpointing off on CPU, fixed seeds,
   sequential sampling over the pre-drawn stream, checkpoints every
   ``save_every`` steps with a completion marker, evaluation every
   ``eval_every`` steps, Ctrl-C -> checkpoint + clean exit;
4. write the run directory contract (see :mod:`convtune.training.artifacts`).
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convtune.conversation import Conversation
from convtune.errors import ConfigError, ConvtuneError, DataValidationError, Problem
from convtune.training import checkpoints as ckpt
from convtune.training.artifacts import (
    CHECKPOINTS,
    finalize_run_dir,
    write_config,
    write_serving_files,
)
from convtune.training.config import TrainConfig, TrainConfigError, check_config, check_run_dir
from convtune.training.dataset import (
    ExampleBuilder,
    build_eval_examples,
    build_training_stream,
    split_validation,
    to_hf_dataset,
)
from convtune.training import taskset

log = logging.getLogger(__name__)
Reporter = Callable[[str], None]


class TrainingInterrupted(ConvtuneError):
    """Training stopped on request (Ctrl-C / SIGTERM) after saving a resumable checkpoint."""

    def __init__(self, run_dir: Path, step: int, checkpoint: Path | None):
        self.run_dir = run_dir
        self.step = step
        self.checkpoint = checkpoint
        where = f"checkpoint saved at step {step}: {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(
            f"training interrupted; {where}\n"
            f"resume with: convtune train --out {run_dir} --resume"
        )


@dataclass
class RunResult:
    """What a finished (or dry) run produced."""

    run_dir: Path
    steps: int
    metrics: dict[str, Any]
    resumed_from: int | None = None
    dry_run: bool = False
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"


@dataclass
class PreparedRun:
    """Everything decided before weights are loaded."""

    config: TrainConfig
    tasks: list[Any]
    train_convs: list[Conversation]
    val_convs: list[Conversation]
    model_dir: Path
    tokenizer: Any
    renderer: Any
    stream: Any  # TrainingStream
    val_examples: list[Any]
    val_stats: Any
    context: dict[str, Any] | None = None  # few-shot examples per conversation id (data.few_shot)
    examples_dir: Path | None = None  # few-shot example index (a temporary folder until the run finishes)
    few_shot_tasks: list[str] = field(default_factory=list)
    predictor_notes: list[str] = field(default_factory=list)  # what the data allows label-task predictors
    _examples_tmp: Any = None  # keeps the temporary folder alive

    def plan(self) -> dict[str, Any]:
        tr = self.config.train
        return {
            "model": self.config.model.name,
            "model_dir": str(self.model_dir),
            "tasks": [t.name for t in self.tasks],
            "train_conversations": len(self.train_convs),
            "validation_conversations": len(self.val_convs),
            "passes": self.stream.passes,
            "steps": self.stream.max_steps,
            "examples_per_step": tr.effective_batch,
            "train": self.stream.stats.as_dict(),
            "validation": self.val_stats.as_dict(),
            "renderer_max_transcript_tokens": self.renderer.max_transcript_tokens,
            "few_shot": ({"k": self.config.data.few_shot, "tasks": self.few_shot_tasks}
                         if self.examples_dir is not None else None),
            "predictor_notes": self.predictor_notes,
        }


# ---- 1 + 2: validation and data, no weights ------------------------------------------------


def _load_split(path: Path, fmt: str | None, problems: list[Problem]) -> list[Conversation]:
    from convtune.data import load_conversations

    try:
        _, convs = load_conversations(path, fmt)
    except DataValidationError as exc:
        problems.extend(exc.problems)
        return []
    except ConvtuneError as exc:  # e.g. an undetectable format
        problems.append(Problem(str(path), None, None, str(exc)))
        return []
    return convs


def prepare(cfg: TrainConfig, *, resume: bool = False, tasks: Sequence[Any] | None = None,
            check_dir: bool = True) -> PreparedRun:
    """Validate everything and build the tokenized examples. Loads no model weights.

    Problems deferred by ``load_config(..., defer=True)`` are reported together
    with the task and data problems found here.

    Raises:
        TrainConfigError: config problems (and any data problems found alongside).
        DataValidationError: data problems only.
    """
    problems = list(cfg.deferred_problems)
    for p in check_config(cfg) + (check_run_dir(cfg, resume=resume) if check_dir else []):
        if p not in problems:
            problems.append(p)
    task_list, task_problems = taskset.resolve_tasks(cfg.tasks, available=tasks)
    problems += task_problems
    problems += _device_problems(cfg.train.device)
    weights = {t.name: cfg.tasks.weight(t.name) for t in task_list}

    data_problems: list[Problem] = []
    train_convs: list[Conversation] = []
    val_convs: list[Conversation] = []
    if cfg.data.train is not None and cfg.data.train.is_file():
        train_convs = _load_split(cfg.data.train, cfg.data.format, data_problems)
        if cfg.data.limit is not None:
            train_convs = train_convs[: cfg.data.limit]
    if cfg.data.validation is not None and cfg.data.validation.is_file():
        val_convs = _load_split(cfg.data.validation, cfg.data.validation_format, data_problems)

    # classification tasks' label sets from the data (recorded in cfg.tasks.labels -> config.json)
    task_list, label_notes = taskset.apply_data_labels(
        cfg.tasks, task_list, ((train_convs, cfg.data.train), (val_convs, cfg.data.validation)),
        data_problems)
    if task_list:
        for convs, path in ((train_convs, cfg.data.train), (val_convs, cfg.data.validation)):
            if convs:
                check = taskset.check_labels(convs, task_list, str(path))
                data_problems.extend(check.problems)

        def usable(cs: list[Conversation]) -> list[Conversation]:
            return [c for c in cs if any(weights[t.name] > 0 and t.has_label(c) for t in task_list)]

        if train_convs and not data_problems:
            kept = usable(train_convs)
            if not kept:
                present = sorted({k for c in train_convs for k in c.labels})
                data_problems.append(Problem(
                    str(cfg.data.train), None, None,
                    f"no conversation has a label for any selected task ({', '.join(weights)}); labels in "
                    f"the file: {', '.join(present) or 'none'}. Select tasks with tasks.names or add labels",
                ))
            train_convs = kept
            if cfg.data.validation is None:
                train_convs, val_convs = split_validation(
                    train_convs, cfg.data.effective_validation_fraction(), cfg.train.seed,
                    strata=_strata(train_convs, task_list))
            else:
                val_convs = usable(val_convs)
                if not val_convs:
                    data_problems.append(Problem(
                        str(cfg.data.validation), None, None,
                        "no validation conversation has a label for a selected task"))

    if cfg.data.few_shot and task_list and not any(getattr(t, "labels", None) for t in task_list):
        problems.append("data.few_shot: few-shot examples are shown for classification tasks (with labels); "
                        f"none is selected ({', '.join(t.name for t in task_list)})")
    if problems:
        raise TrainConfigError(problems + [str(p) for p in data_problems])
    if data_problems:
        raise DataValidationError(data_problems)

    # Tokenizer and examples (no weights).
    from transformers import AutoTokenizer

    from convtune.models import resolve_model
    from convtune.renderer import Renderer

    model_dir = resolve_model(cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    renderer = Renderer(tokenizer, max_transcript_tokens=cfg.max_transcript_tokens)
    builder = ExampleBuilder(renderer, cfg.train.max_seq_len)
    context, examples = _few_shot(cfg, train_convs, val_convs, task_list)
    tr = cfg.train
    stream = build_training_stream(
        builder, train_convs, task_list, weights, seed=tr.seed, epochs=tr.epochs,
        batch_size=tr.batch_size, grad_accum=tr.grad_accum, max_steps=tr.max_steps,
        max_tokens_budget=tr.max_tokens_budget, source=str(cfg.data.train), context=context,
    )
    val_examples, val_stats = build_eval_examples(builder, val_convs, task_list, weights, context)
    prep = PreparedRun(cfg, task_list, train_convs, val_convs, model_dir, tokenizer, renderer, stream,
                       val_examples, val_stats, context=context, predictor_notes=label_notes)
    if cfg.predictors.enabled:
        from convtune.predictors.fit import plan_fields

        label_tasks = [t for t in task_list if taskset.label_fields_of(t)]
        prep.predictor_notes += plan_fields(label_tasks, train_convs, val_convs, cfg.predictors)[2]
    if examples is not None:
        prep._examples_tmp, prep.few_shot_tasks = examples
        prep.examples_dir = Path(prep._examples_tmp.name) / "examples"
    return prep


def _strata(convs: list[Conversation], tasks: list[Any]) -> list[Any] | None:
    """Stratify the validation split by the label field with the most labels (e.g. intent)."""
    fields = [(t, f) for t in tasks for f in taskset.label_fields_of(t)]
    if not fields:
        return None
    task, field = max(fields, key=lambda tf: len(tf[1].labels))
    return [task.field_values(task.gold(c))[field.key] if task.has_label(c) else None for c in convs]


def _few_shot(cfg: TrainConfig, train_convs: list[Conversation], val_convs: list[Conversation],
              task_list: list[Any]) -> tuple[dict[str, Any] | None, tuple[Any, list[str]] | None]:
    """With ``data.few_shot: K``: index the training conversations (a temporary folder, copied
    into the run at the end) and retrieve each train/validation conversation's K nearest
    examples, never itself. Returns (context per conversation id, (folder, task names))."""
    k = cfg.data.few_shot
    if not k:
        return None, None
    import tempfile

    from embeddings.fewshot import build_example_index, few_shot_context, few_shot_tasks

    fs_tasks = few_shot_tasks(task_list)
    tmp = tempfile.TemporaryDirectory(prefix="convtune-examples-")
    coll = build_example_index(Path(tmp.name) / "examples", train_convs, fs_tasks)
    try:
        context = few_shot_context(coll, [*train_convs, *val_convs], fs_tasks, k)
    finally:
        coll.close()
    return context, (tmp, [t.name for t in fs_tasks])


# ---- 3: training ----------------------------------------------------------------------------


def _device_problems(requested: str) -> list[str]:
    if requested not in ("cuda", "mps"):
        return []
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        return ["train.device: cuda requested but no CUDA GPU is visible; use auto or cpu"]
    if requested == "mps" and not torch.backends.mps.is_available():
        return ["train.device: mps requested but MPS is not available; use auto or cpu"]
    return []


def device_and_precision(requested: str) -> tuple[str, Any, bool, bool]:
    """(device, model dtype, bf16 autocast, fp16 autocast): fp32 on CPU, bf16 on CUDA (fp16 autocast
    with fp32 weights on GPUs without bf16)."""
    import torch

    from convtune.models import pick_device, pick_dtype

    device = pick_device(requested)
    problems = _device_problems(device)
    if problems:
        raise ConfigError(problems[0])
    dtype = pick_dtype(device)
    bf16 = device == "cuda" and dtype == torch.bfloat16
    fp16 = device == "cuda" and not bf16
    return device, dtype, bf16, fp16


def _trainer_class():
    import torch
    from trl import SFTTrainer

    class ConvtuneSFTTrainer(SFTTrainer):
        """Counts trained tokens and (conversation, task) pairs per micro-batch."""

        convtune_counters = None

        def training_step(self, model, inputs, *args, **kwargs):
            counters = self.convtune_counters
            if counters is not None:
                labels = inputs.get("labels")
                pairs = 0
                if labels is not None:
                    m = labels != -100
                    # each answer is one contiguous run of loss tokens
                    pairs = int(m[:, :1].sum() + (m[:, 1:] & ~m[:, :-1]).sum())
                if "attention_mask" in inputs:
                    tokens = int(inputs["attention_mask"].sum())
                else:
                    tokens = int(torch.as_tensor(inputs["input_ids"]).numel())
                counters.add_batch(tokens, pairs)
            return super().training_step(model, inputs, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            # A folder being (re)written is not complete until CompleteCheckpointCallback says so.
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / ckpt.MARKER).unlink(missing_ok=True)
            super()._save_checkpoint(model, trial)

    return ConvtuneSFTTrainer


def _sft_config(cfg: TrainConfig, out: Path, steps: int, has_eval: bool, device: str, bf16: bool, fp16: bool):
    from trl import SFTConfig

    tr = cfg.train
    # TRL defaults to bf16=True and gradient checkpointing on, even on CPU (~20x slower there):
    # both are always set explicitly from the device.
    gc = tr.gradient_checkpointing if tr.gradient_checkpointing is not None else device == "cuda"
    checkpointing = {"gradient_checkpointing": gc}
    if "activation_checkpointing" in SFTConfig.__dataclass_fields__:  # the new name (transformers >= 5.x)
        checkpointing["activation_checkpointing"] = gc
    eval_steps = tr.eval_every if tr.eval_every > 0 else steps
    return SFTConfig(
        **checkpointing,
        output_dir=str(out),
        max_steps=steps,
        num_train_epochs=1,
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum,
        learning_rate=tr.lr,
        lr_scheduler_type=tr.lr_scheduler,
        warmup_steps=tr.warmup_ratio,  # < 1: a ratio of max_steps
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        logging_strategy="steps",
        logging_steps=tr.log_every,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=tr.save_every,
        save_total_limit=None,  # rotation happens after the completion marker (CompleteCheckpointCallback)
        save_only_model=False,
        seed=tr.seed,
        data_seed=tr.seed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=device == "cpu",
        max_length=None if tr.padding_free else tr.max_seq_len,
        padding_free=tr.padding_free,
        train_sampling_strategy="sequential",  # the stream is pre-shuffled per epoch with the seed
        shuffle_dataset=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        prediction_loss_only=True,
        remove_unused_columns=True,
        dataset_num_proc=None,
    )


class _QuietLibraries:
    """Silence the per-map / per-load progress bars of datasets and transformers while training."""

    def __enter__(self):
        import datasets
        from transformers.utils import logging as hf_logging

        self._ds = datasets.is_progress_bar_enabled()
        self._hf = hf_logging.is_progress_bar_enabled()
        self._verbosity = hf_logging.get_verbosity()
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        # transformers 5.x renamed gradient_* to activation_checkpointing; TRL/PEFT still read the old names.
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*",
                                category=FutureWarning)
        return self

    def __exit__(self, *exc):
        import datasets
        from transformers.utils import logging as hf_logging

        self._warnings.__exit__(*exc)
        if self._ds:
            datasets.enable_progress_bars()
        if self._hf:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(self._verbosity)
        return False


class _SignalGuard:
    """First SIGINT/SIGTERM: request a checkpoint-and-stop. Second SIGINT: abort at once."""

    def __init__(self, flag, report: Reporter):
        self.flag = flag
        self.report = report
        self.old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.flag.requested:
            raise KeyboardInterrupt
        self.flag.requested = True
        self.flag.signal_name = signal.Signals(signum).name
        self.report(f"\n{self.flag.signal_name}: saving a checkpoint after the current step, then stopping "
                    "(Ctrl-C again aborts without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


def _build_trainer(prep: PreparedRun, ckpt_dir: Path, device: str, dtype: Any, bf16: bool, fp16: bool,
                   counters: Any, flag: Any, progress: bool,
                   extra_callbacks: Sequence[Any] = ()) -> tuple[Any, int, int]:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgressCallback
    from transformers.trainer_utils import set_seed

    from convtune.training.callbacks import (
        CompleteCheckpointCallback,
        InterruptCallback,
        ProgressCallback,
        ThroughputCallback,
    )

    cfg = prep.config
    set_seed(cfg.train.seed)
    model = AutoModelForCausalLM.from_pretrained(prep.model_dir, dtype=dtype, trust_remote_code=False)
    model.config.use_cache = False
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )
    args = _sft_config(cfg, ckpt_dir, prep.stream.max_steps, bool(prep.val_examples), device, bf16, fp16)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(prep.stream.examples),
        eval_dataset=to_hf_dataset(prep.val_examples) if prep.val_examples else None,
        processing_class=prep.tokenizer,
        peft_config=lora,
        callbacks=[ThroughputCallback(counters),
                   CompleteCheckpointCallback(counters, cfg.output.max_checkpoints,
                                              {"stream": prep.stream.fingerprint()}),
                   InterruptCallback(flag), *extra_callbacks],
    )
    trainer.convtune_counters = counters
    for cb in extra_callbacks:  # e.g. the jobs runner reports tokens/s from the run's counters
        if hasattr(cb, "bind_counters"):
            cb.bind_counters(counters)
    trainer.remove_callback(PrinterCallback)  # our ProgressCallback replaces both
    trainer.remove_callback(HFProgressCallback)
    if progress:
        trainer.add_callback(ProgressCallback(counters))
    trainable, total = trainer.model.get_nb_trainable_parameters()
    return trainer, trainable, total


def _fit_predictors(prep: PreparedRun, model: Any, say: Reporter) -> dict[str, Any] | None:
    """Encoder head, k-NN and the tuned LM scored on validation; the winner per label field is
    recorded in RUN_DIR/predictors (see convtune.predictors.fit)."""
    cfg = prep.config
    if not cfg.predictors.enabled or not any(taskset.label_fields_of(t) for t in prep.tasks):
        return None
    from convtune.predictors.fit import fit_predictors, format_validation_table

    lm_answers = None
    if cfg.predictors.lm_candidates:
        def lm_answers(convs: Sequence[Conversation], tasks: Sequence[Any]) -> dict[tuple[str, str], Any]:
            import torch

            from convtune.evaluation.generate import Generator, answer_tasks

            was_training, use_cache = model.training, model.config.use_cache
            model.eval()
            model.config.use_cache = True
            try:
                with torch.inference_mode():
                    run = answer_tasks(Generator(model, prep.tokenizer), prep.renderer, convs, tasks,
                                       constrained=True, only_labelled=True, context=prep.context)
            finally:
                model.config.use_cache = use_cache
                model.train(was_training)
            return {(a.conversation_id, a.task): a for a in run.answers}

    selection = fit_predictors(
        prep.config.run_dir, prep.tasks, prep.train_convs, prep.val_convs, settings=cfg.predictors,
        lm_name="lm_retrieval" if prep.context else "lm", lm_answers=lm_answers, seed=cfg.train.seed,
        report=say)
    if selection is not None:
        say("predictors chosen on validation:\n" + format_validation_table(selection))
    return selection


def selection_summary(selection: dict[str, Any]) -> dict[str, Any]:
    """What a run's metrics.json (and a job's result) says about its predictors."""
    from convtune.predictors.fit import validation_table

    encoder = {k: selection["encoder"].get(k) for k in ("base", "tuned", "epochs", "steps", "seconds")}
    return {"tasks": selection["tasks"], "validation": validation_table(selection),
            "notes": selection["notes"], "encoder": encoder}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    dry_run: bool = False,
    tasks: Sequence[Any] | None = None,
    progress: bool = False,
    report: Reporter | None = None,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train a LoRA adapter on the config's data and tasks; write the run directory.

    Args:
        config: a resolved config (:func:`convtune.training.config.load_config`).
        resume: continue the run in ``config.output.dir`` from its newest complete checkpoint.
        dry_run: validate and build the examples, load no weights, write nothing.
        tasks: the catalogue ``config.tasks.names`` selects from, instead of the task registry.
        progress: show a progress bar (a terminal) or progress lines (otherwise) on stderr.
        report: where one-line status messages go (default: the module logger).
        callbacks: extra ``transformers.TrainerCallback`` objects, run after convtune's own (so a
            checkpoint is marked complete before they see its ``on_save``), e.g. the jobs runner's
            event and checkpoint publisher.

    Raises:
        TrainConfigError / DataValidationError: before any weights are loaded.
        TrainingInterrupted: Ctrl-C or SIGTERM; a resumable checkpoint was saved.
    """
    say: Reporter = report or log.info
    wall0 = time.time()
    cfg = config
    prep = prepare(cfg, resume=resume, tasks=tasks)
    plan = prep.plan()
    st = prep.stream.stats
    say(
        f"data: {len(prep.train_convs)} train / {len(prep.val_convs)} validation conversations, "
        f"tasks {', '.join(plan['tasks'])}; {st.examples} examples ({st.pairs} pairs, {st.tokens} tokens, "
        f"longest {st.longest}) in {prep.stream.max_steps} steps of {cfg.train.effective_batch}"
        + (f"; {st.shortened_transcripts} transcripts shortened, {st.dropped_pairs} pairs and "
           f"{st.dropped_examples} examples dropped to fit {cfg.train.max_seq_len} tokens"
           if st.shortened_transcripts or st.dropped_pairs or st.dropped_examples else "")
    )
    for note in prep.predictor_notes:
        say(f"note: {note}")
    if dry_run:
        return RunResult(cfg.run_dir, 0, {}, dry_run=True, plan=plan)

    device, dtype, bf16, fp16 = device_and_precision(cfg.train.device)
    run = cfg.run_dir
    if run.exists() and not resume and cfg.output.overwrite:
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    write_config(run, cfg)
    write_serving_files(run, cfg, tokenizer=prep.tokenizer, renderer=prep.renderer, tasks=prep.tasks)
    ckpt_dir = run / CHECKPOINTS

    from convtune.training.callbacks import InterruptFlag, RunCounters

    resume_from: Path | None = None
    resumed_step: int | None = None
    counters = RunCounters()
    if resume:
        for p in ckpt.remove_incomplete(ckpt_dir):
            say(f"ignored a half-written checkpoint (no completion marker): {p.name}")
        resume_from = ckpt.newest_complete(ckpt_dir)
        if resume_from is None:
            say("no complete checkpoint to resume from: starting from step 0")
        else:
            resumed_step = ckpt.checkpoint_step(resume_from) or 0
            marker = ckpt.read_marker(resume_from)
            if marker.get("stream") not in (None, prep.stream.fingerprint()):
                raise ConfigError(
                    f"cannot resume {run}: its training examples changed since the run started (data "
                    "file, tasks, tokenizer or renderer differ); restore them, or start a new run (--out)"
                )
            counters = RunCounters.restore(marker, resumed_step)
            say(f"resuming from {resume_from.name} (step {resumed_step} of {prep.stream.max_steps})")

    flag = InterruptFlag()
    with _QuietLibraries():
        trainer, trainable, total = _build_trainer(prep, ckpt_dir, device, dtype, bf16, fp16, counters, flag,
                                                   progress, callbacks)
        say(f"model {cfg.model.name} on {device} ({str(dtype).replace('torch.', '')}); LoRA r={cfg.lora.r}: "
            f"{trainable:,} trainable of {total:,} parameters; run dir {run}")
        with _SignalGuard(flag, say):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    if flag.requested:
        raise TrainingInterrupted(run, step, ckpt.newest_complete(ckpt_dir))

    selection = _fit_predictors(prep, trainer.model, say)
    metrics = finalize_run_dir(
        run, cfg, trainer=trainer, tokenizer=prep.tokenizer, renderer=prep.renderer, tasks=prep.tasks,
        counters=counters, plan=plan, resumed_from=resumed_step,
        device=device, dtype=str(dtype).replace("torch.", ""), wall_seconds=time.time() - wall0,
        trainable_params=trainable, total_params=total, examples_dir=prep.examples_dir,
        few_shot_tasks=prep.few_shot_tasks,
        extra={"predictors": selection_summary(selection)} if selection else None,
    )
    say(f"done: {step} steps, train loss {metrics['final_train_loss']}, eval loss "
        f"{metrics['final_eval_loss']}, {metrics['tokens_per_second']} tokens/s, "
        f"{metrics['pairs_per_second']} pairs/s -> {run}")
    return RunResult(run, step, metrics, resumed_from=metrics["resumed_from"], plan=plan)
