"""The metadata database: files, fine-tuning jobs, their events and checkpoints, batches and
their per-line results, and the generations the server returned with the feedback users gave
on them.

One schema in SQLAlchemy Core, so the same code runs on SQLite (the default,
``sqlite:///$CONVTUNE_HOME/jobs.sqlite``) and PostgreSQL
(``postgresql+psycopg://user@host/db``) when one machine is not enough.
Several processes share it: the server, the worker and each job's process.
SQLite runs in WAL mode with a busy timeout, so readers never block the
writer and concurrent writers wait instead of failing.

Queue semantics live in :meth:`JobsDB.claim`: a job moves ``queued ->
running`` with a conditional UPDATE (``WHERE status = 'queued'``), so two
workers can never both take it, on either database.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    UniqueConstraint,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

metadata = MetaData()

files = Table(
    "files",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # uploaded | processed | error
    Column("status_details", Text),
    Column("kind", String(16)),  # conversations | chat | preference (what training it feeds)
    Column("format", String(16)),  # the detected source format
    Column("records", Integer),
    Column("info", JSON),  # redaction counts, tasks with labels, problems (machine-readable)
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("training_file", String(48), nullable=False),
    Column("validation_file", String(48)),
    Column("suffix", String(64)),
    Column("seed", Integer, nullable=False),
    Column("user_metadata", JSON),
    Column("method", JSON, nullable=False),
    Column("hyperparameters", JSON, nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("fine_tuned_model", String(200)),
    Column("error", JSON),
    Column("trained_tokens", Integer),  # updated at every logged step while the job runs
    Column("estimated_finish", Integer),  # unix time, from the mean step time so far (running jobs)
    Column("validation", JSON),  # per-task predictor choice and its validation table (label tasks)
    Column("created_at", Integer, nullable=False),
    Column("created_ts", Float, nullable=False, default=time.time),  # exact order (created_at is seconds)
    Column("finished_at", Integer),
    Column("requested", String(16)),  # cancel | pause, acted on by the worker
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(64)),
    Column("pid", Integer),
    Column("heartbeat_at", Float),
)

events = Table(
    "job_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(48), nullable=False, unique=True),
    Column("job_id", String(48), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("level", String(8), nullable=False),
    Column("type", String(16), nullable=False),  # message | metrics
    Column("message", Text, nullable=False),
    Column("data", JSON),
)

checkpoints = Table(
    "job_checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(48), nullable=False, unique=True),
    Column("job_id", String(48), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("metrics", JSON),
    Column("model_id", String(200), nullable=False),
)

generations = Table(
    "generations",
    metadata,
    Column("id", String(64), primary_key=True),  # the response id the client got (chatcmpl-..., analysis-...)
    Column("tenant", String(64), nullable=False, index=True),
    Column("model", String(200), nullable=False),
    Column("task", String(64)),  # None: free chat/generate; else the conversation task
    Column("prompt", JSON, nullable=False),  # chat messages, PII-redacted
    Column("outputs", JSON, nullable=False),  # one text per choice (analyze: one per task), redacted
    Column("prompt_hash", String(64), nullable=False, index=True),  # same prompt -> same hash (pairing)
    Column("created_at", Integer, nullable=False),
    Column("expires_at", Integer, nullable=False, index=True),
)

feedback = Table(
    "feedback",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(48), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("response_id", String(64), nullable=False, index=True),
    Column("choice", String(64), nullable=False),  # choice index, or the task name (analyze)
    Column("kind", String(16), nullable=False),  # thumbs | rating | correction | preference
    Column("value", JSON),  # true/false, 1-5, corrected text
    Column("other_response_id", String(64)),  # preference: the response it was preferred over
    Column("other_choice", String(64)),
    Column("created_at", Integer, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("input_file_id", String(48), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("completion_window", String(8), nullable=False),
    Column("user_metadata", JSON),
    Column("status", String(16), nullable=False, index=True),
    Column("errors", JSON),
    Column("total", Integer, nullable=False, default=0),
    Column("output_file_id", String(48)),
    Column("error_file_id", String(48)),
    Column("created_at", Integer, nullable=False),
    Column("created_ts", Float, nullable=False, default=time.time),
    Column("in_progress_at", Integer),
    Column("expires_at", Integer, nullable=False),
    Column("finalizing_at", Integer),
    Column("completed_at", Integer),
    Column("failed_at", Integer),
    Column("expired_at", Integer),
    Column("cancelling_at", Integer),
    Column("cancelled_at", Integer),
    Column("worker", String(64)),  # the runner processing it (serve.batches.BatchRunner)
    Column("heartbeat_at", Float),
    Column("webhook", JSON),  # delivery: url, attempts, last status
)

# One row per finished line of a batch: committed as each finishes, so a runner that dies
# loses no finished line, and (batch_id, custom_id) is unique, so none is written twice.
batch_results = Table(
    "batch_results",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", String(48), nullable=False, index=True),
    Column("custom_id", String(64), nullable=False),
    Column("line", Integer, nullable=False),
    Column("ok", Integer, nullable=False),  # 1: a 2xx response (output file), 0: error file
    Column("record", JSON, nullable=False),  # the output line, in OpenAI's batch output shape
    UniqueConstraint("batch_id", "custom_id"),
)

BATCH_LIVE = ("validating", "in_progress", "finalizing", "cancelling")

ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    """A server-generated id (never derived from user input): ``<prefix>-<24 random chars>``."""
    return f"{prefix}-{secrets.token_hex(12)}"


def default_url(home: str | Path) -> str:
    return f"sqlite:///{Path(home) / 'jobs.sqlite'}"


class JobsDB:
    """Typed access to the four tables. Rows come back as plain dicts."""

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = _engine(url)
        metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a database was created (create_all makes tables, never columns)."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(self.engine).get_columns("jobs")}
        for name, kind in (("validation", "JSON"), ("estimated_finish", "INTEGER")):
            if name not in have:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {kind}"))

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # ---- files ---------------------------------------------------------------------------------

    def add_file(self, row: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(insert(files).values(**row))

    def update_file(self, file_id: str, **values: Any) -> None:
        with self.tx() as c:
            c.execute(update(files).where(files.c.id == file_id).values(**values))

    def get_file(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = c.execute(select(files).where(files.c.id == file_id, files.c.tenant == tenant)).first()
        return dict(row._mapping) if row else None

    def list_files(self, tenant: str, *, purpose: str | None = None, limit: int = 10_000) -> list[dict]:
        q = select(files).where(files.c.tenant == tenant)
        if purpose:
            q = q.where(files.c.purpose == purpose)
        with self.tx() as c:
            rows = c.execute(q.order_by(files.c.created_at.desc(), files.c.id).limit(limit)).all()
        return [dict(r._mapping) for r in rows]

    def delete_file(self, tenant: str, file_id: str) -> bool:
        with self.tx() as c:
            res = c.execute(files.delete().where(files.c.id == file_id, files.c.tenant == tenant))
        return res.rowcount == 1

    # ---- jobs ----------------------------------------------------------------------------------

    def add_job(self, row: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(insert(jobs).values(**row))

    def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        q = select(jobs).where(jobs.c.id == job_id)
        if tenant is not None:
            q = q.where(jobs.c.tenant == tenant)
        with self.tx() as c:
            row = c.execute(q).first()
        return dict(row._mapping) if row else None

    def update_job(self, job_id: str, *, where_status: Sequence[str] | None = None, **values: Any) -> bool:
        """Update a job; with ``where_status`` only if its status is one of them. True if updated."""
        cond = jobs.c.id == job_id
        if where_status is not None:
            cond = and_(cond, jobs.c.status.in_(list(where_status)))
        with self.tx() as c:
            return c.execute(update(jobs).where(cond).values(**values)).rowcount == 1

    def list_jobs(
        self,
        tenant: str,
        *,
        after: str | None = None,
        limit: int = 20,
        metadata_filter: dict[str, str] | None = None,
    ) -> tuple[list[dict], bool]:
        """Newest first; ``after`` = the last id of the previous page. Returns (page, has_more)."""
        q = select(jobs).where(jobs.c.tenant == tenant)
        if after is not None:
            anchor = self.get_job(after, tenant)
            if anchor is None:
                return [], False
            q = q.where(
                or_(
                    jobs.c.created_ts < anchor["created_ts"],
                    and_(jobs.c.created_ts == anchor["created_ts"], jobs.c.id < anchor["id"]),
                )
            )
        q = q.order_by(jobs.c.created_ts.desc(), jobs.c.id.desc())
        if not metadata_filter:  # (JSON is filtered here, the same way on every database: no SQL limit then)
            q = q.limit(limit + 1)
        with self.tx() as c:
            out = [dict(r._mapping) for r in c.execute(q).all()]
        if metadata_filter:
            out = [
                j
                for j in out
                if all((j["user_metadata"] or {}).get(k) == v for k, v in metadata_filter.items())
            ]
        return out[:limit], len(out) > limit

    def claim(self, worker: str, *, per_tenant: int) -> dict[str, Any] | None:
        """Take the oldest queued job whose tenant runs fewer than ``per_tenant`` jobs."""
        with self.tx() as c:
            busy = dict(
                c.execute(
                    select(jobs.c.tenant, func.count())
                    .where(jobs.c.status == "running")
                    .group_by(jobs.c.tenant)
                ).all()
            )
            queued = c.execute(
                select(jobs.c.id, jobs.c.tenant)
                .where(jobs.c.status == "queued")
                .order_by(jobs.c.created_ts, jobs.c.id)
                .limit(200)
            ).all()
        running = jobs.alias("running")
        for job_id, tenant in queued:
            if busy.get(tenant, 0) >= per_tenant:
                continue
            # The tenant's limit is re-checked inside the UPDATE: on SQLite (one writer at a time) two
            # workers cannot both start a job of a tenant at its limit.
            room = (
                select(func.count())
                .select_from(running)
                .where(running.c.tenant == tenant, running.c.status == "running")
                .scalar_subquery()
                < per_tenant
            )
            with self.tx() as c:
                took = c.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == "queued", room)
                    .values(status="running", worker=worker, heartbeat_at=time.time(), pid=None)
                ).rowcount
            if took == 1:
                return self.get_job(job_id)
        return None

    def stale_running(self, older_than_s: float) -> list[dict[str, Any]]:
        """Running jobs whose process stopped beating (died, or its machine did)."""
        limit = time.time() - older_than_s
        with self.tx() as c:
            rows = c.execute(
                select(jobs).where(
                    jobs.c.status == "running",
                    or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < limit),
                )
            )
            return [dict(r._mapping) for r in rows.all()]

    # ---- events and checkpoints -------------------------------------------------------------------

    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.tx() as c:
            c.execute(
                insert(events).values(
                    id=new_id("ftevent"),
                    job_id=job_id,
                    created_at=int(time.time()),
                    level=level,
                    type=type,
                    message=message,
                    data=data,
                )
            )

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[dict], bool]:
        """Newest first (as OpenAI lists them); ``after`` = the last id of the previous page."""
        return self._page(events, job_id, after, limit)

    def add_checkpoint(self, job_id: str, step: int, model_id: str, metrics: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(
                insert(checkpoints).values(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    created_at=int(time.time()),
                    step=step,
                    model_id=model_id,
                    metrics=metrics,
                )
            )

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> tuple[list[dict], bool]:
        return self._page(checkpoints, job_id, after, limit)

    def _page(self, table: Table, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        q = select(table).where(table.c.job_id == job_id)
        if after is not None:
            with self.tx() as c:
                seq = c.execute(
                    select(table.c.seq).where(table.c.id == after, table.c.job_id == job_id)
                ).scalar()
            if seq is None:
                return [], False
            q = q.where(table.c.seq < seq)
        with self.tx() as c:
            rows = c.execute(q.order_by(table.c.seq.desc()).limit(limit + 1)).all()
        out = [dict(r._mapping) for r in rows]
        return out[:limit], len(out) > limit

    # ---- kept generations and feedback on them (rlhf.feedback) ------------------------------------

    def add_generation(self, row: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(generations.delete().where(generations.c.expires_at < int(time.time())))  # retention
            c.execute(insert(generations).values(**row))

    def get_generation(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        with self.tx() as c:
            row = c.execute(
                select(generations).where(
                    generations.c.id == response_id,
                    generations.c.tenant == tenant,
                    generations.c.expires_at >= int(time.time()),
                )
            ).first()
        return dict(row._mapping) if row else None

    def add_feedback(self, row: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(insert(feedback).values(**row))

    def tenant_feedback(self, tenant: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every feedback row of a tenant with its (unexpired) generation, oldest first."""
        with self.tx() as c:
            rows = c.execute(
                select(
                    feedback,
                    generations.c.prompt,
                    generations.c.outputs,
                    generations.c.prompt_hash,
                    generations.c.model,
                    generations.c.task,
                )
                .join(generations, generations.c.id == feedback.c.response_id)
                .where(feedback.c.tenant == tenant, generations.c.expires_at >= int(time.time()))
                .order_by(feedback.c.seq)
            ).all()
        return [dict(r._mapping) for r in rows]

    # ---- batches ----------------------------------------------------------------------------------

    def add_batch(self, row: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(insert(batches).values(**row))

    def get_batch(self, batch_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        q = select(batches).where(batches.c.id == batch_id)
        if tenant is not None:
            q = q.where(batches.c.tenant == tenant)
        with self.tx() as c:
            row = c.execute(q).first()
        return dict(row._mapping) if row else None

    def update_batch(self, batch_id: str, *, where_status: Sequence[str] | None = None,
                     **values: Any) -> bool:
        cond = batches.c.id == batch_id
        if where_status is not None:
            cond = and_(cond, batches.c.status.in_(list(where_status)))
        with self.tx() as c:
            return c.execute(update(batches).where(cond).values(**values)).rowcount == 1

    def list_batches(self, tenant: str, *, after: str | None = None,
                     limit: int = 20) -> tuple[list[dict], bool]:
        """Newest first; ``after`` = the last id of the previous page. Returns (page, has_more)."""
        q = select(batches).where(batches.c.tenant == tenant)
        if after is not None:
            anchor = self.get_batch(after, tenant)
            if anchor is None:
                return [], False
            q = q.where(or_(batches.c.created_ts < anchor["created_ts"],
                            and_(batches.c.created_ts == anchor["created_ts"], batches.c.id < anchor["id"])))
        q = q.order_by(batches.c.created_ts.desc(), batches.c.id.desc()).limit(limit + 1)
        with self.tx() as c:
            out = [dict(r._mapping) for r in c.execute(q).all()]
        return out[:limit], len(out) > limit

    def claim_batch(self, worker: str, *, stale_s: float) -> dict[str, Any] | None:
        """Take the oldest live batch nobody is processing (no runner, or one whose heartbeat is
        older than ``stale_s``: it died). A conditional UPDATE, so two runners never both take it."""
        now = time.time()
        free = or_(batches.c.worker.is_(None), batches.c.heartbeat_at < now - stale_s)
        with self.tx() as c:
            ids = c.execute(select(batches.c.id).where(batches.c.status.in_(BATCH_LIVE), free)
                            .order_by(batches.c.created_ts, batches.c.id).limit(20)).scalars().all()
        for batch_id in ids:
            with self.tx() as c:
                mine = update(batches).where(batches.c.id == batch_id, batches.c.status.in_(BATCH_LIVE), free)
                got = c.execute(mine.values(worker=worker, heartbeat_at=now)).rowcount
            if got == 1:
                return self.get_batch(batch_id)
        return None

    def add_batch_result(self, batch_id: str, custom_id: str, line: int, ok: bool,
                         record: dict[str, Any]) -> bool:
        """Record one finished line; False (and nothing written) if it was recorded already."""
        from sqlalchemy.exc import IntegrityError

        try:
            with self.tx() as c:
                c.execute(insert(batch_results).values(batch_id=batch_id, custom_id=custom_id, line=line,
                                                       ok=int(ok), record=record))
            return True
        except IntegrityError:
            return False

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """Every finished line, in input-file order."""
        with self.tx() as c:
            rows = c.execute(select(batch_results).where(batch_results.c.batch_id == batch_id)
                             .order_by(batch_results.c.line)).all()
        return [dict(r._mapping) for r in rows]

    def batch_counts(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) lines so far."""
        with self.tx() as c:
            q = select(batch_results.c.ok, func.count()).where(batch_results.c.batch_id == batch_id)
            rows = dict(c.execute(q.group_by(batch_results.c.ok)).all())
        return int(rows.get(1, 0)), int(rows.get(0, 0))


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=_dumps)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, json_serializer=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
