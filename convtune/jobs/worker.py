"""The worker: takes queued jobs from the database and runs each in its own process.

``convtune worker`` (alone, on any machine that sees the database and
``$CONVTUNE_HOME``) or started by ``convtune serve``. Each loop:

1. jobs whose process stopped beating (killed, crashed machine, a worker that
   died) go back to the queue, up to ``max_attempts``; they resume from their
   newest complete checkpoint;
2. cancel/pause requests of its running jobs become SIGTERM: the job saves a
   checkpoint and ends itself as cancelled or paused;
3. finished job processes are reaped; one that died without ending its job
   (``kill -9``, OOM) leaves it to step 1;
4. queued jobs are claimed while it has free slots, oldest first, at most
   ``per_tenant`` running jobs per tenant.

Job processes die with their worker (Linux parent-death signal), so a killed
worker never leaves an unsupervised trainer behind; its jobs are recovered by
the next worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from convtune.jobs.db import JobsDB

log = logging.getLogger("convtune.jobs")


@dataclass
class WorkerSettings:
    max_jobs: int = 1  # concurrent job processes of this worker (2 CPU cores: one)
    per_tenant: int = 1  # running jobs per tenant, across all workers
    poll_s: float = 1.0
    stale_s: float = 30.0  # a running job without a heartbeat this long is recovered
    max_attempts: int = 3  # starts of one job (the first + resumes) before it fails
    stop_grace_s: float = 120.0  # on shutdown, how long running jobs get to checkpoint


@dataclass
class _Child:
    job_id: str
    proc: subprocess.Popen
    signalled: str | None = None


@dataclass
class Worker:
    db: JobsDB
    home: Path
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    children: dict[str, _Child] = field(default_factory=dict)

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, then stop the running jobs (they checkpoint and requeue)."""
        log.info(
            "worker %s: polling %s every %.1f s", self.name, self.db.url.split("@")[-1], self.settings.poll_s
        )
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a database hiccup must not kill the worker
                log.exception("worker loop error")
            stop.wait(self.settings.poll_s)
        self.shutdown()

    def tick(self) -> None:
        self.recover_stale()
        self.forward_requests()
        self.reap()
        while len(self.children) < self.settings.max_jobs:
            job = self.db.claim(self.name, per_tenant=self.settings.per_tenant)
            if job is None:
                break
            self.start(job)

    def recover_stale(self) -> None:
        for job in self.db.stale_running(self.settings.stale_s):
            if job["id"] in self.children:
                continue  # ours and alive: a slow start (loading the model) before the first beat
            attempts = job["attempts"] + 1
            if attempts >= self.settings.max_attempts:
                self.db.update_job(
                    job["id"],
                    where_status=["running"],
                    status="failed",
                    finished_at=int(time.time()),
                    pid=None,
                    error={
                        "code": "job_process_lost",
                        "param": None,
                        "message": f"the job's process stopped {attempts} times",
                    },
                )
                self.db.add_event(job["id"], "Job failed: its process kept dying", level="error")
                continue
            if self.db.update_job(
                job["id"],
                where_status=["running"],
                status="queued",
                attempts=attempts,
                pid=None,
                worker=None,
                heartbeat_at=None,
            ):
                self.db.add_event(
                    job["id"],
                    "The job's process stopped (killed or lost); queued to resume from its newest checkpoint",
                    level="warn",
                )

    def forward_requests(self) -> None:
        for child in self.children.values():
            job = self.db.get_job(child.job_id)
            if job and job["requested"] and child.signalled is None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)  # the trainer checkpoints, then ends the job
                child.signalled = job["requested"]

    def reap(self) -> None:
        for job_id, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[job_id]
            job = self.db.get_job(job_id)
            if job and job["status"] == "running":  # died without ending its job
                log.warning("job %s process exited with %s while running", job_id, code)
                self.db.update_job(job_id, where_status=["running"], heartbeat_at=0.0)  # stale now

    def start(self, job: dict) -> None:
        cmd = [
            sys.executable,
            "-m",
            "convtune.jobs.runner",
            job["id"],
            "--db",
            self.db.url,
            "--home",
            str(self.home),
        ]
        logs = self.home / "tenants" / job["tenant"] / "jobs" / job["id"]
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "job.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.db.update_job(job["id"], pid=proc.pid)
        self.children[job["id"]] = _Child(job["id"], proc)
        log.info("job %s started (pid %d)", job["id"], proc.pid)

    def shutdown(self) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_grace_s
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
        self.children.clear()


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the worker dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the heartbeat still recovers the job
        pass
    os.setpgrp()  # the terminal's Ctrl-C goes to the worker, which stops jobs cleanly
