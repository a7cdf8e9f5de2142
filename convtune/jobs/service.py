"""Fine-tuning jobs: requests -> job rows, job rows -> OpenAI job objects, state changes.

A job's life::

    validating_files -> queued -> running -> succeeded | failed | cancelled
                           ^         |
                           +- paused <-+   (pause: checkpoint, stop; resume: queue again)

Creating a job checks its files at once (they were validated and redacted at
upload), so a job over a bad file never starts. The worker
(:mod:`convtune.jobs.worker`) moves queued jobs to running; the job's own
process (:mod:`convtune.jobs.runner`) trains and finishes it.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from convtune.errors import ConvtuneError
from convtune.jobs.db import FINISHED, JobsDB, new_id

_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
BASE_LR = 5e-4  # LoRA on a small model; learning_rate_multiplier scales it


class JobError(ConvtuneError):
    """A job request or state change that cannot be done: ``status`` 400/404/409 and the ``param``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


# ---- the request (OpenAI's shape, convtune's extras marked) ------------------------------------


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | Literal["auto"] = Field("auto", description="passes over the data (1-50) or auto")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="examples per optimizer step (1-64) or auto"
    )
    learning_rate_multiplier: float | Literal["auto"] = Field("auto", description=f"x {BASE_LR} (0.01-10)")
    # convtune extensions
    max_steps: int | None = Field(None, ge=1, le=100_000, description="stop after N optimizer steps")
    save_every: int | None = Field(None, ge=1, le=100_000, description="checkpoint every N steps")
    lora_r: int | None = Field(None, ge=1, le=256)
    tasks: list[str] | None = Field(
        None, description="conversation files: the tasks to train (default: all labelled)"
    )
    labels: dict[str, list[str]] | None = Field(
        None,
        description="conversation files: label set per classification task, e.g. {intent: [...]} "
        "(default: from the training data, as convtune train's tasks.labels_from_data)",
    )


class DpoHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float | Literal["auto"] = "auto"
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    max_steps: int | None = Field(None, ge=1, le=100_000, description="convtune: stop after N steps")


DPO_BASE_LR = 5e-5  # DPO moves an already tuned adapter: a smaller step than SFT


class _Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class _Dpo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: _Supervised | None = None
    dpo: _Dpo | None = None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=200)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, max_length=40)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(None, max_length=16)
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # the older top-level form


def _check_range(value: Any, lo: float, hi: float, param: str) -> None:
    if value != "auto" and not lo <= value <= hi:
        raise JobError(400, f'{param} must be between {lo} and {hi} or "auto"', param=param)


def create_job(
    db: JobsDB, tenant: str, req: JobRequest, *, base_name: str, base_spec: str, tenant_model: Any = None
) -> dict[str, Any]:
    """Validate and queue a job. ``base_name``: the served base model id users name;
    ``base_spec``: what ``convtune.models.load_model`` loads for it (name, folder or hub id);
    ``tenant_model(tenant, model_id)``: the run folder of a tenant's model, or None (DPO starts
    from one)."""
    method = req.method or Method(type="supervised")
    if method.type == "dpo":
        return _create_dpo_job(db, tenant, req, method, base_name, base_spec, tenant_model)
    if req.model != base_name:
        raise JobError(
            400,
            f"model must be the server's base model {base_name!r}",
            param="model",
            code="model_not_available",
        )
    if req.suffix is not None and not _SUFFIX.match(req.suffix):
        raise JobError(400, "suffix: 1-40 letters, digits, '_' or '-'", param="suffix")
    hp = (
        (method.supervised.hyperparameters if method.supervised else None)
        or req.hyperparameters
        or Hyperparameters()
    )
    _check_range(hp.n_epochs, 1, 50, "hyperparameters.n_epochs")
    _check_range(hp.batch_size, 1, 64, "hyperparameters.batch_size")
    _check_range(hp.learning_rate_multiplier, 0.01, 10, "hyperparameters.learning_rate_multiplier")
    train = _usable_file(db, tenant, req.training_file, "training_file")
    if train["kind"] == "preference":
        raise JobError(400, "a preference file trains with method dpo, not supervised", param="training_file")
    if req.validation_file is not None:
        val = _usable_file(db, tenant, req.validation_file, "validation_file")
        if val["kind"] != train["kind"]:
            raise JobError(
                400,
                f"validation_file holds {val['kind']} data, training_file {train['kind']}",
                param="validation_file",
            )
    labelled = sorted((train["info"] or {}).get("tasks", {}))
    if hp.tasks is not None:
        if train["kind"] != "conversations":
            raise JobError(
                400,
                "hyperparameters.tasks applies to conversation files with labels",
                param="hyperparameters.tasks",
            )
        missing = [t for t in hp.tasks if t not in labelled]
        if missing or not hp.tasks:
            raise JobError(
                400,
                f"no labels for task(s) {missing or hp.tasks} in the training file "
                f"(labelled: {', '.join(labelled)})",
                param="hyperparameters.tasks",
            )
    files = [train] + ([val] if req.validation_file is not None else [])
    labels, notes = _label_sets(hp, files, hp.tasks or labelled, train["kind"])
    job_id = new_id("ftjob")
    now = int(time.time())
    row = {
        "id": job_id,
        "tenant": tenant,
        "model": req.model,
        "training_file": req.training_file,
        "validation_file": req.validation_file,
        "suffix": req.suffix,
        "seed": req.seed if req.seed is not None else 42,
        "user_metadata": req.metadata,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp.model_dump(exclude_none=True)}},
        "hyperparameters": {
            **resolve_hyperparameters(hp, train["records"]),
            **({"labels": labels} if labels else {}),
            "base": base_spec,
            "base_name": base_name,
        },
        "status": "validating_files",
        "created_at": now,
        "attempts": 0,
    }
    return _queue(db, row, train, notes)


def _label_sets(
    hp: Hyperparameters, files: list[dict[str, Any]], names: list[str], kind: str
) -> tuple[dict[str, list[str]], list[str]]:
    """Every classification task's label set for the job (``hp.labels``, else the files' labels,
    the way ``convtune train`` resolves them) and what to say about sets taken from the data."""
    param = "hyperparameters.labels"
    if kind != "conversations":
        if hp.labels:
            raise JobError(400, "hyperparameters.labels applies to conversation files with labels",
                           param=param)
        return {}, []
    from pydantic import ValidationError

    from convtune.training import taskset
    from convtune.training.config import TasksSection
    from tasks.registry import default_registry

    given = hp.labels or {}
    unknown = [t for t in given if t not in names]
    if unknown:
        raise JobError(400, f"no task {', '.join(map(repr, unknown))} to train in this job (tasks: "
                       f"{', '.join(names)})", param=param)
    known = default_registry()
    selected = [n for n in names if n in known]  # others are the training run's to report
    if not selected:
        return {}, []
    try:
        section = TasksSection(names=selected, labels=given)
    except ValidationError as exc:
        raise JobError(400, f"hyperparameters.labels: {exc.errors()[0]['msg']}", param=param) from None
    tasks, problems = taskset.resolve_tasks(section)
    if problems:
        msg = "; ".join(p.replace("tasks.labels.", "hyperparameters.labels.") for p in problems)
        raise JobError(400, msg, param=param)
    infos = [f.get("info") or {} for f in files]
    seen: dict[str, dict[str, taskset.SeenLabel]] = {}
    for info in infos:
        for task, counts in (info.get("labels") or {}).items():
            for lab, n in counts.items():
                seen.setdefault(task, {}).setdefault(lab, taskset.SeenLabel()).count += int(n)
    complete = all("labels" in info for info in infos)  # files uploaded before label counts: training decides
    sets = taskset.resolve_label_sets(section, tasks, seen if complete else {},
                                      names_key="hyperparameters.tasks", labels_key=param)
    if sets.problems:
        raise JobError(400, "; ".join(f"{name}: {msg}" for name, msg in sets.problems), param="training_file")
    for name, labels in sets.labels.items():
        outside = sorted(set(seen.get(name, {})) - set(labels))
        if outside:
            more = ", ..." if len(outside) > 10 else ""
            raise JobError(400, f"the training data has {name} labels outside hyperparameters.labels.{name}: "
                           f"{', '.join(outside[:10])}{more} (add them, or leave the set to the data)",
                           param=param)
    if not complete:
        sets.labels = {k: v for k, v in sets.labels.items() if k in given}
    return sets.labels, sets.notes


def _queue(
    db: JobsDB, row: dict[str, Any], train: dict[str, Any], notes: list[str] | None = None
) -> dict[str, Any]:
    job_id = row["id"]
    db.add_job(row)
    db.add_event(job_id, f"Created fine-tuning job {job_id}")
    db.add_event(
        job_id, f"Validated training file {row['training_file']}: {train['records']} {train['kind']} records"
    )
    for note in notes or []:
        db.add_event(job_id, f"Label set: {note}")
    job = db.get_job(job_id)
    db.update_job(job_id, status="queued")
    db.add_event(job_id, "Job queued")
    # the job as created: a worker may claim it the moment it is queued (retrieve shows it running)
    return {**job, "status": "queued"}


def _create_dpo_job(
    db: JobsDB,
    tenant: str,
    req: JobRequest,
    method: Method,
    base_name: str,
    base_spec: str,
    tenant_model: Any,
) -> dict[str, Any]:
    """DPO on a preference file, starting from one of the tenant's tuned models (the reference is
    that model's adapter, frozen)."""
    sft = tenant_model(tenant, req.model) if tenant_model is not None else None
    if sft is None:
        raise JobError(
            404 if req.model != base_name else 400,
            f"method dpo starts from one of your fine-tuned models (an ft:... id), not {req.model!r}",
            param="model",
            code="model_not_found",
        )
    if req.suffix is not None and not _SUFFIX.match(req.suffix):
        raise JobError(400, "suffix: 1-40 letters, digits, '_' or '-'", param="suffix")
    hp = method.dpo.hyperparameters if method.dpo else DpoHyperparameters()
    _check_range(hp.beta, 0.001, 10, "hyperparameters.beta")
    _check_range(hp.n_epochs, 1, 50, "hyperparameters.n_epochs")
    _check_range(hp.batch_size, 1, 64, "hyperparameters.batch_size")
    _check_range(hp.learning_rate_multiplier, 0.01, 10, "hyperparameters.learning_rate_multiplier")
    train = _usable_file(db, tenant, req.training_file, "training_file")
    if train["kind"] != "preference":
        raise JobError(
            400,
            f"method dpo needs a preference file; {req.training_file} holds {train['kind']} data",
            param="training_file",
        )
    records = max(1, int(train["records"] or 1))
    resolved = {
        "beta": 0.1 if hp.beta == "auto" else hp.beta,
        "n_epochs": max(1, min(3, math.ceil(50 / records))) if hp.n_epochs == "auto" else hp.n_epochs,
        "batch_size": 2 if hp.batch_size == "auto" else hp.batch_size,
        "learning_rate_multiplier": 1.0
        if hp.learning_rate_multiplier == "auto"
        else hp.learning_rate_multiplier,
        **({"max_steps": hp.max_steps} if hp.max_steps else {}),
        "base": base_spec,
        "base_name": base_name,
        "sft_run": str(sft),
    }
    row = {
        "id": new_id("ftjob"),
        "tenant": tenant,
        "model": req.model,
        "training_file": req.training_file,
        "validation_file": None,
        "suffix": req.suffix,
        "seed": req.seed if req.seed is not None else 42,
        "user_metadata": req.metadata,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hp.model_dump(exclude_none=True)}},
        "hyperparameters": resolved,
        "status": "validating_files",
        "created_at": int(time.time()),
        "attempts": 0,
    }
    return _queue(db, row, train)


def _usable_file(db: JobsDB, tenant: str, file_id: str, param: str) -> dict[str, Any]:
    row = db.get_file(tenant, file_id)
    if row is None:
        raise JobError(404, f"file {file_id!r} not found", param=param, code="file_not_found")
    if row["purpose"] != "fine-tune":
        raise JobError(400, f"file {file_id!r} has purpose {row['purpose']!r}, not fine-tune", param=param)
    if row["status"] != "processed":
        raise JobError(
            400,
            f"file {file_id!r} is not usable (status {row['status']}): "
            f"{(row['status_details'] or '').splitlines()[0] if row['status_details'] else ''}",
            param=param,
            code="invalid_file",
        )
    return row


def resolve_hyperparameters(hp: Hyperparameters, records: int) -> dict[str, Any]:
    """``"auto"`` made concrete from the data size (recorded on the job, so a resume is exact)."""
    records = max(1, int(records or 1))
    epochs = hp.n_epochs if hp.n_epochs != "auto" else max(1, min(5, math.ceil(100 / records)))
    batch = hp.batch_size if hp.batch_size != "auto" else (1 if records <= 100 else 4)
    mult = hp.learning_rate_multiplier if hp.learning_rate_multiplier != "auto" else 1.0
    out = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": mult}
    out.update(
        {
            k: v
            for k, v in hp.model_dump(include={"max_steps", "save_every", "lora_r", "tasks"}).items()
            if v is not None
        }
    )
    return out


def fine_tuned_model_id(job: dict[str, Any]) -> str:
    """``ft:<base>:<tenant>:<suffix>:<job id>``, as OpenAI names them; servable by that id."""
    base = job["hyperparameters"].get("base_name", job["model"])
    return f"ft:{base}:{job['tenant']}:{job['suffix'] or ''}:{job['id']}"


def run_dir(home: str | Path, job: dict[str, Any]) -> Path:
    return Path(home) / "tenants" / job["tenant"] / "jobs" / job["id"]


# ---- state changes from the API -------------------------------------------------------------


def request_stop(db: JobsDB, tenant: str, job_id: str, action: Literal["cancel", "pause"]) -> dict[str, Any]:
    """Cancel or pause: a job not yet running changes at once; a running one is stopped by its
    worker (checkpoint first) and changes when its process exits."""
    job = get_job(db, tenant, job_id)
    final = "cancelled" if action == "cancel" else "paused"
    waiting = (
        ("validating_files", "queued") if action == "pause" else ("validating_files", "queued", "paused")
    )
    if db.update_job(
        job_id,
        where_status=waiting,
        status=final,
        requested=None,
        finished_at=int(time.time()) if final == "cancelled" else None,
    ):
        db.add_event(job_id, f"Job {final}")
    elif db.update_job(job_id, where_status=["running"], requested=action):
        db.add_event(job_id, f"{action.capitalize()} requested; stopping at the next step")
    else:
        job = get_job(db, tenant, job_id)
        if action == "cancel" and job["status"] == "cancelled":
            return job
        raise JobError(
            409,
            f"cannot {action} a job that is {job['status']}",
            param="fine_tuning_job_id",
            code="invalid_state",
        )
    return get_job(db, tenant, job_id)


def resume_job(db: JobsDB, tenant: str, job_id: str) -> dict[str, Any]:
    get_job(db, tenant, job_id)
    if not db.update_job(job_id, where_status=["paused"], status="queued", requested=None):
        raise JobError(
            409, "only a paused job can be resumed", param="fine_tuning_job_id", code="invalid_state"
        )
    db.add_event(job_id, "Job resumed; queued to continue from its newest checkpoint")
    return get_job(db, tenant, job_id)


def get_job(db: JobsDB, tenant: str, job_id: str) -> dict[str, Any]:
    job = db.get_job(job_id, tenant)
    if job is None:
        raise JobError(
            404, f"fine-tuning job {job_id!r} not found", param="fine_tuning_job_id", code="job_not_found"
        )
    return job


# ---- OpenAI objects -----------------------------------------------------------------------------


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    hp = job["hyperparameters"]
    extra = tuple(k for k in ("beta", "labels") if k in hp)  # labels: convtune, the label sets trained
    shown = ("n_epochs", "batch_size", "learning_rate_multiplier") + extra
    return {
        "object": "fine_tuning.job",
        "id": job["id"],
        "model": job["model"],
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "fine_tuned_model": job["fine_tuned_model"],
        "organization_id": job["tenant"],
        "result_files": [],
        "status": job["status"],
        "validation_file": job["validation_file"],
        "training_file": job["training_file"],
        "hyperparameters": {k: hp[k] for k in shown},
        "method": job["method"],
        "trained_tokens": job["trained_tokens"],
        "error": job["error"] or None,
        "seed": job["seed"],
        "metadata": job["user_metadata"],
        "estimated_finish": job.get("estimated_finish") if job["status"] == "running" else None,
        "integrations": [],
        "user_provided_suffix": job["suffix"],
        # convtune: which predictor answers each label task, with every candidate's validation score
        "validation": job.get("validation"),
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": row["id"],
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "data": row["data"] or {},
        "type": row["type"],
    }


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["model_id"],
        "metrics": {"step": row["step"], **(row["metrics"] or {})},
        "fine_tuning_job_id": row["job_id"],
        "step_number": row["step"],
    }


def is_finished(job: dict[str, Any]) -> bool:
    return job["status"] in FINISHED
