"""One fine-tuning job in its own process: ``python -m convtune.jobs.runner --db URL --home DIR JOB_ID``.

Started by the worker. It beats a heartbeat into the job row, trains with
:func:`convtune.training.train` (resuming from the run's newest complete
checkpoint when there is one), publishes events (step, loss, tokens/s, eval
loss) and every complete checkpoint as a servable model, and ends the job:

* finished -> the run is registered as the tenant's model ``ft:...`` (usable at once);
* SIGTERM (the worker: cancel, pause or its own shutdown) -> a checkpoint is saved and
  the job becomes cancelled, paused, or queued again;
* bad data or configuration -> failed, with the reason; a crash -> failed (exit 1).

A process killed outright (``kill -9``, OOM, the machine) stops beating; the
worker then queues the job again and it resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from convtune.jobs.db import JobsDB
from convtune.jobs.files import processed_path
from convtune.jobs.service import BASE_LR, fine_tuned_model_id, run_dir

log = logging.getLogger("convtune.jobs")
HEARTBEAT_S = float(os.environ.get("CONVTUNE_JOB_HEARTBEAT_S", "2"))


def build_config(db: JobsDB, job: dict[str, Any], home: Path) -> tuple[Any, list[Any] | None]:
    """The job as a training config (+ the task catalogue for chat files)."""
    from convtune.training.config import TrainConfig

    hp = job["hyperparameters"]
    tenant = job["tenant"]
    train_file = processed_path(home, tenant, job["training_file"])
    val_file = processed_path(home, tenant, job["validation_file"]) if job["validation_file"] else None
    chat = (db.get_file(tenant, job["training_file"]) or {}).get("kind") == "chat"
    catalogue = None
    if chat:
        from tasks.text import ChatTask

        catalogue, names = [ChatTask()], ["chat"]
    else:
        names = hp.get("tasks") or _labelled(train_file)
    train: dict[str, Any] = {
        "epochs": hp["n_epochs"],
        "batch_size": 1,
        "grad_accum": hp["batch_size"],
        "lr": BASE_LR * hp["learning_rate_multiplier"],
        "seed": job["seed"],
        "device": "auto",
        "log_every": 1,
        "eval_every": 0,
        "save_every": hp.get("save_every", 50),
        "max_seq_len": 1024,
    }
    if hp.get("max_steps"):
        train["max_steps"] = hp["max_steps"]
    cfg = TrainConfig.model_validate(
        {
            "model": {"name": hp["base"]},
            "data": {
                "train": str(train_file),
                "validation": str(val_file) if val_file else None,
                "validation_fraction": None,  # auto: a stratified 20% held out to choose predictors
                "format": "convtune",
                "validation_format": "convtune" if val_file else None,
            },
            "tasks": {"names": names, "labels": hp.get("labels") or {}},  # resolved at job creation
            "lora": {"r": hp.get("lora_r", 16), "alpha": 2 * hp.get("lora_r", 16)},
            "train": train,
            "output": {"dir": str(run_dir(home, job) / "run"), "max_checkpoints": 2},
        }
    )
    return cfg, catalogue


def _labelled(path: Path) -> list[str]:
    from convtune.data import load_conversations

    _, convs = load_conversations(path, "convtune")
    seen: dict[str, None] = {}
    for c in convs:
        for name, value in c.labels.items():
            if value is not None:
                seen.setdefault(name, None)
    return list(seen)


class _Heartbeat(threading.Thread):
    def __init__(self, db: JobsDB, job_id: str):
        super().__init__(daemon=True, name="convtune-heartbeat")
        self.db, self.job_id = db, job_id
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.db.update_job(self.job_id, where_status=["running"], heartbeat_at=time.time())
            except Exception:  # a locked or briefly unreachable database: the next beat retries
                log.warning("heartbeat failed", exc_info=True)


def _publisher(db: JobsDB, job: dict[str, Any], home: Path) -> Any:
    """A TrainerCallback writing metrics events and publishing complete checkpoints."""
    from transformers import TrainerCallback

    from convtune.tenancy import ModelStore
    from convtune.training import checkpoints as ckpt

    store = ModelStore(home)
    ft = fine_tuned_model_id(job)

    class Publisher(TrainerCallback):
        counters: Any = None  # the run's RunCounters (train() binds them): tokens and step time

        def bind_counters(self, counters: Any) -> None:
            self.counters = counters

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "loss" not in logs and "eval_loss" not in logs:
                return  # the end-of-training summary repeats the last step
            data: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps}
            if "loss" in logs:
                data["train_loss"] = round(float(logs["loss"]), 5)
            if "eval_loss" in logs:
                data["valid_loss"] = round(float(logs["eval_loss"]), 5)
            if "learning_rate" in logs:
                data["learning_rate"] = float(logs["learning_rate"])
            counters = self.counters
            if counters is not None and counters.session_step_seconds > 0:
                data["tokens_per_second"] = round(counters.session_rate(), 1)
                data["trained_tokens"] = counters.tokens
                live = {"trained_tokens": counters.tokens}
                done = state.global_step - counters.session_start_step
                if done > 0 and state.max_steps > 0:  # wall time per step this session, evaluation included
                    per_step = (time.time() - counters.session_started) / done
                    left = state.max_steps - state.global_step
                    live["estimated_finish"] = int(time.time() + per_step * left)
                data.update(live)
                db.update_job(job["id"], where_status=["running"], **live)
            loss = data.get("train_loss", data.get("valid_loss"))
            db.add_event(
                job["id"],
                f"Step {state.global_step}/{state.max_steps}: loss={loss}",
                type="metrics",
                data=data,
            )

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not (folder.is_dir() and ckpt.read_marker(folder)):
                return
            run = Path(args.output_dir).parent
            model_id = f"{ft}:ckpt-step-{state.global_step}"
            staged = run / f".serve-{state.global_step}"
            shutil.rmtree(staged, ignore_errors=True)
            (staged / "adapter").mkdir(parents=True)
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copy2(folder / name, staged / "adapter" / name)
            shutil.copytree(run / "tokenizer", staged / "tokenizer")
            for name in ("config.json", "tasks.json"):
                shutil.copy2(run / name, staged / name)
            (staged / "metrics.json").write_text("{}")
            store.add(job["tenant"], model_id, staged, replace=True)
            shutil.rmtree(staged, ignore_errors=True)
            last = next((h for h in reversed(state.log_history) if "loss" in h), {})
            metrics = {"train_loss": round(float(last["loss"]), 5)} if "loss" in last else {}
            db.add_checkpoint(job["id"], state.global_step, model_id, metrics)
            db.add_event(job["id"], f"Checkpoint at step {state.global_step}: servable as {model_id}")

    return Publisher()


def run_job(db: JobsDB, home: Path, job_id: str) -> int:
    """Train one claimed job to its end state. Returns the process exit code."""
    job = db.get_job(job_id)
    if job is None or job["status"] != "running":
        log.error("job %s is not running (%s)", job_id, job and job["status"])
        return 2
    db.update_job(job_id, pid=os.getpid(), heartbeat_at=time.time())
    beat = _Heartbeat(db, job_id)
    beat.start()  # before the heavy imports: loading torch must not look like a dead job
    train_fn = _dpo if job["method"].get("type") == "dpo" else _supervised
    try:
        outcome = train_fn(db, home, job)
    except Exception as exc:
        from convtune.errors import ConvtuneError

        if isinstance(exc, ConvtuneError):  # bad data or configuration: the job fails, the process is fine
            _fail(db, job_id, "invalid_training_setup", str(exc))
            return 0
        log.exception("job %s crashed", job_id)
        _fail(db, job_id, "internal_error", f"training failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        beat.stop.set()
    if outcome is None:  # stopped by SIGTERM: cancel, pause or the worker's shutdown
        _stopped(db, job_id, checkpointed=train_fn is _supervised)
        return 0
    run, steps, tokens, summary = outcome
    ft = fine_tuned_model_id(job)
    from convtune.tenancy import ModelStore

    ModelStore(home).add(job["tenant"], ft, run, replace=True)
    db.update_job(
        job_id,
        where_status=["running"],
        status="succeeded",
        fine_tuned_model=ft,
        pid=None,
        trained_tokens=tokens,
        estimated_finish=None,
        finished_at=int(time.time()),
        requested=None,
    )
    db.add_event(
        job_id, f"The job has successfully completed: {ft} ({steps} steps, {summary})", data={"step": steps}
    )
    return 0


def _supervised(db: JobsDB, home: Path, job: dict[str, Any]) -> tuple[Path, int, int, str] | None:
    """SFT via convtune.training.train, resuming from the newest complete checkpoint."""
    from convtune.training.checkpoints import newest_complete
    from convtune.training.trainer import TrainingInterrupted, train

    job_id = job["id"]
    cfg, catalogue = build_config(db, job, home)
    resume = cfg.run_dir.exists() and newest_complete(cfg.run_dir / "checkpoints") is not None
    if resume:
        db.add_event(job_id, f"Resuming from the newest complete checkpoint (attempt {job['attempts'] + 1})")
    else:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a half-started run with no checkpoint
        db.add_event(job_id, "Training started")
    try:
        result = train(
            cfg,
            resume=resume,
            tasks=catalogue,
            callbacks=[_publisher(db, job, home)],
            report=lambda msg: log.info("%s: %s", job_id, msg),
        )
    except TrainingInterrupted:
        return None
    if cfg.tasks.labels and not job["hyperparameters"].get("labels"):  # a file uploaded before label counts
        db.update_job(job_id, hyperparameters={**job["hyperparameters"], "labels": cfg.tasks.labels})
    _publish_validation(db, job_id, result.metrics.get("predictors"))
    loss = result.metrics.get("final_train_loss")
    return result.run_dir, result.steps, int(result.metrics.get("tokens") or 0), f"final train loss {loss}"


def _publish_validation(db: JobsDB, job_id: str, predictors: dict[str, Any] | None) -> None:
    """The per-task predictor choice: one ``metrics`` event per label field (every candidate's
    validation score and the winner), notes as warnings, and the table on the job itself."""
    if not predictors:
        return
    for row in predictors["validation"]:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items())
        how = " (default: validation too small to choose)" if row["fallback"] else ""
        db.add_event(job_id, f"Validation {row['field']} ({row['metric']}, n={row['n_validation']}): "
                     f"{scores}; answered by {row['winner']}{how}", type="metrics", data={"validation": row})
    for note in predictors["notes"]:
        db.add_event(job_id, note, level="warn")
    db.update_job(job_id, validation=predictors)


def _dpo(db: JobsDB, home: Path, job: dict[str, Any]) -> tuple[Path, int, int, str] | None:
    """DPO via rlhf.align on the tenant's model. Short, so a stop is not checkpointed: SIGTERM ends
    it after the current step, and a resumed job starts over."""
    import signal

    from transformers import TrainerCallback

    from convtune.jobs.service import DPO_BASE_LR
    from rlhf.align import AlignConfig, align

    class StopOnSignal(TrainerCallback):
        stop_requested = False

        def on_step_end(self, args, state, control, **kwargs):
            if self.stop_requested:
                control.should_training_stop = True

    stopper = StopOnSignal()
    signal.signal(signal.SIGTERM, lambda *_: setattr(stopper, "stop_requested", True))
    hp, out = job["hyperparameters"], run_dir(home, job) / "run"
    db.add_event(job["id"], f"DPO started from {job['model']}")
    cfg = AlignConfig(
        run=Path(hp["sft_run"]),
        data=processed_path(home, job["tenant"], job["training_file"]),
        out=out,
        method="dpo",
        beta=hp["beta"],
        epochs=hp["n_epochs"],
        max_steps=hp.get("max_steps"),
        lr=DPO_BASE_LR * hp["learning_rate_multiplier"],
        batch_size=hp["batch_size"],
        seed=job["seed"],
    )
    metrics = align(cfg, callbacks=[_publisher(db, job, home), stopper])
    if metrics.get("stopped"):
        return None
    summary = f"final DPO loss {metrics['final_loss']}, reward accuracy {metrics['reward_accuracy']}"
    return out, metrics["steps"], 0, summary


def _stopped(db: JobsDB, job_id: str, *, checkpointed: bool) -> None:
    requested = (db.get_job(job_id) or {}).get("requested")
    status = {"cancel": "cancelled", "pause": "paused"}.get(requested, "queued")
    db.update_job(
        job_id,
        where_status=["running"],
        status=status,
        requested=None,
        pid=None,
        finished_at=int(time.time()) if status == "cancelled" else None,
    )
    where = "its checkpoint" if checkpointed else "the beginning (DPO is not checkpointed)"
    db.add_event(
        job_id,
        {
            "cancelled": "Job cancelled",
            "paused": f"Job paused; resumes from {where}",
            "queued": f"Worker stopping: job queued to resume from {where}",
        }[status],
    )


def _fail(db: JobsDB, job_id: str, code: str, message: str) -> None:
    db.update_job(
        job_id,
        where_status=["running"],
        status="failed",
        pid=None,
        finished_at=int(time.time()),
        error={"code": code, "message": message[:2000], "param": None},
    )
    db.add_event(job_id, f"Job failed: {message[:500]}", level="error")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convtune.jobs.runner", description=__doc__.splitlines()[0])
    ap.add_argument("job_id")
    ap.add_argument("--db", required=True)
    ap.add_argument("--home", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    return run_job(JobsDB(args.db), args.home, args.job_id)


if __name__ == "__main__":
    sys.exit(main())
