"""The engine: one thread owns the model; requests queue, batch, decode, stream back.

Request path::

    route --submit()--> pending queue (bounded: over capacity -> 429 at once)
                           |  engine thread: take up to max_batch_size requests
                           v  (waiting batch_wait_ms for more), load their adapters
                        prefill together (left padding, one KV cache, PEFT mixed adapters)
                           v
                        decode step by step on convtune.inference.DecodeLoop; each
                        row samples with its own temperature/top_p/seed (among the
                        tokens its JSON schema allows, if any), stops on an end-of-turn
                        token, a stop string, max_tokens, its deadline or a cancel
                           v
                        events -> the request's callback (the route bridges them
                        into its asyncio loop)

Finished rows leave the batch (their cache rows are dropped), so a long answer
does not make short ones pay, and queued requests join a running batch between
decode steps (continuous batching: prefilled on their own, their cache rows
merged in), so a request arriving mid-batch does not wait for it to finish.
An analysis (``TaskRequest``: call analytics' chained tasks) is a row like any
other: its label tasks are scored when it joins or when its previous answer ends,
its other answers decode in the batch, and its KV row is kept between tasks so each
prompt computes only what is new; chat requests are answered while it runs. Work
that needs the model exclusively (best-of reward scoring) is queued as a job and runs
between batches on the same thread; while one waits, nothing joins the running batch.

Background work (``background=True``: the lines of a batch, :mod:`serve.batches`) has a queue
of its own and no admission slots (a batch never makes chat answer 429): it starts or joins a
batch only while no interactive request is queued or decoding, at most
``BACKGROUND_JOINS`` per step (bounding the prefill a chat request can wait behind), and when
an interactive request arrives the background rows are parked (taken out of the decode loop
with their KV cache, :meth:`DecodeLoop.park`) until it is done, so a chat request decodes as
on an idle server.

Greedy decoding is deterministic and independent of what else is in the batch
up to float rounding of padded matmuls; ``tests/test_serve.py`` checks
mixed-adapter batches and requests joining a running batch against solo runs
byte for byte.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from convtune.inference.sampling import Sampling
from serve.errors import APIError, overloaded
from serve.models import ModelHost, ModelRef

__all__ = ["Engine", "Event", "GenRequest", "Sampling"]

log = logging.getLogger("convtune.serve")

BACKGROUND_JOINS = 4  # background requests joining a running batch per decode step, at most


@dataclass
class Event:
    """``kind``: "delta" (new text), "done" (finish_reason, usage) or "error" (an APIError)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: APIError | None = None
    result: Any = None  # "done" of a TaskRequest: its TaskDialog, every task answered


@dataclass
class GenRequest:
    prompt_ids: list[int]
    model: ModelRef
    sampling: Sampling
    emit: Callable[[Event], None]  # called on the engine thread
    deadline: float  # time.monotonic() by which it must finish
    tenant: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    background: bool = False  # batch work: runs only while no interactive request waits or decodes
    # decode state
    done: bool = False
    guide: Any = None  # convtune.guided.Guide while decoding a JSON-mode request
    seq: Any = None  # convtune.inference.Seq while decoding
    links: Any = None  # serve.links.LinkStripper when sampling.strip_links

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class TaskRequest:
    """Several tasks about one conversation asked in turn in one chat (call analytics): a
    :class:`convtune.evaluation.generate.TaskDialog` decoded inside the running batch like any
    request, its KV row kept between tasks so each prompt computes only what is new.

    ``prepare(generator)`` runs on the engine thread once the request's adapter is in memory
    and builds the dialog (adapter state, such as the adapter's renderer, is read there)."""

    model: ModelRef
    prepare: Callable[[Any], Any]
    emit: Callable[[Event], None]  # called on the engine thread: "done" (result=dialog) or "error"
    deadline: float
    tenant: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    background: bool = False  # as GenRequest.background
    done: bool = False
    dialog: Any = None
    seq: Any = None  # the answer being decoded
    kv: Any = None  # the dialog's KV row while it is not in the decode loop

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: concurrent.futures.Future


class Engine:
    """Bounded admission + a batching loop on one thread. ``start()`` / ``stop()``."""

    def __init__(
        self,
        host: ModelHost,
        *,
        max_batch_size: int = 16,
        max_inflight: int = 128,
        batch_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        from convtune.inference import Generator

        self.host = host
        self.max_batch_size = max_batch_size
        self.max_inflight = max_inflight
        self.batch_wait = batch_wait_ms / 1000
        self.on_batch = on_batch
        self._gen_cls = Generator
        self._gen: Any = None  # built once per model object (it inspects the model), not per batch
        self._cv = threading.Condition()
        self._pending: deque[GenRequest | TaskRequest] = deque()
        self._background: deque[GenRequest | TaskRequest] = deque()
        self._jobs: deque[_Job] = deque()
        self._inflight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run (for tests and metrics)
        self.joins = 0  # requests that joined a running batch
        self.max_rows_seen = 0
        self.prefilled_rows = 0  # prompts prefilled (a prompt shared by n rows counts once)
        self.parks = 0  # times background rows were set aside for interactive work

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="convtune-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, let in-flight work finish for ``timeout`` s, then cancel the rest."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cv:
            for req in [*self._pending, *self._background]:
                req.cancel()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        return len(self._pending) + len(self._jobs)

    @property
    def background_queued(self) -> int:
        return len(self._background)

    # ---- admission (any thread) ---------------------------------------------------------------

    def _admit(self, n: int) -> None:
        if self._stopping:
            raise APIError(
                503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"}
            )
        if self._inflight + n > self.max_inflight:
            raise overloaded()
        self._inflight += n

    def submit(self, requests: list[GenRequest | TaskRequest]) -> None:
        """Queue requests (all or none); raises 429/503 APIError when over capacity. Background
        requests take no admission slot (their submitter bounds how many it has in flight)."""
        with self._cv:
            background = [r for r in requests if r.background]
            if self._stopping and background:
                self._admit(0)  # 503
            self._admit(len(requests) - len(background))
            self._pending.extend(r for r in requests if not r.background)
            self._background.extend(background)
            self._cv.notify_all()

    def run_job(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the engine thread between batches (exclusive use of the model)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._admit(1)
            self._jobs.append(_Job(fn, fut))
            self._cv.notify_all()
        return fut

    def _release(self, n: int = 1) -> None:
        with self._cv:
            self._inflight -= n

    def _close(self, r: GenRequest, event: Event | None = None) -> None:
        """The one place a request ends, on every path (finished, failed, cancelled, past its
        deadline): marked done, its last event sent, its admission slot given back at once (under
        continuous batching a batch can run as long as requests keep joining it)."""
        if r.done:
            return
        r.done = True
        try:
            if event is not None:
                r.emit(event)
        finally:
            if not r.background:
                self._release()

    # ---- the loop (engine thread) ---------------------------------------------------------------

    def _loop(self) -> None:
        from convtune.inference.quantize import engine_thread_setup

        engine_thread_setup(self.host.model)
        while True:
            with self._cv:
                while not self._pending and not self._jobs and not self._background and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._pending and not self._jobs and not self._background:
                    return
                job = self._jobs.popleft() if self._jobs else None
            if job is not None:
                self._run_job(job)
                continue
            if self.batch_wait and self._pending and len(self._pending) < self.max_batch_size:
                time.sleep(self.batch_wait)  # let concurrent requests join this batch
            with self._cv:  # interactive requests first; background work only when none waits
                queue = self._pending or self._background
                size = self.max_batch_size if queue is self._pending else BACKGROUND_JOINS
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            live = [r for r in batch if not self._finish_if_stale(r)]
            joined: list[GenRequest] = []  # requests that joined the running batch (filled by _run_batch)
            if live:
                try:
                    self._run_batch(live, joined)
                except APIError as exc:
                    for r in live + joined:
                        self._fail(r, exc)
                except Exception as exc:  # a bug or OOM: fail these requests, keep serving
                    log.exception("batch of %d failed", len(live) + len(joined))
                    for r in live + joined:
                        self._fail(
                            r,
                            APIError(
                                500,
                                f"generation failed: {type(exc).__name__}",
                                type="server_error",
                                code="internal_error",
                            ),
                        )
            for r in batch + joined:  # nothing should be left; if something is, it ends here too
                if not r.done:
                    log.error("request left unfinished by its batch")
                    self._fail(r, APIError(500, "generation ended without an answer", type="server_error",
                                           code="internal_error"))

    def _run_job(self, job: _Job) -> None:
        try:
            if job.future.set_running_or_notify_cancel():
                job.future.set_result(job.fn())
        except BaseException as exc:  # delivered to the waiting route
            job.future.set_exception(exc)
        finally:
            self._release()

    def _finish_if_stale(self, r: GenRequest) -> bool:
        if r.cancelled.is_set():
            self._close(r)
            return True
        if time.monotonic() > r.deadline:
            self._fail(r, _timeout())
            return True
        return False

    def _fail(self, r: GenRequest, err: APIError) -> None:
        self._close(r, Event("error", error=err))

    # ---- batched decoding -------------------------------------------------------------------------

    def _loadable(self, batch: list[GenRequest]) -> list[GenRequest]:
        """Load each distinct adapter on its own, so one tenant's broken or mismatched
        adapter fails only the requests that named it, not the rest of the batch."""
        bad: dict[str | None, APIError] = {}
        for key in dict.fromkeys(r.model.adapter_key for r in batch if r.model.adapter_key is not None):
            ref = next(r.model for r in batch if r.model.adapter_key == key)
            try:
                self.host.ensure([ref])
            except APIError as exc:
                bad[key] = exc
            except Exception:  # unreadable files, PEFT errors
                log.exception("adapter %s failed to load", key)
                bad[key] = APIError(
                    500,
                    f"model {ref.id!r} could not be loaded",
                    type="server_error",
                    code="model_load_failed",
                )
        for r in batch:
            if r.model.adapter_key in bad:
                self._fail(r, bad[r.model.adapter_key])
        return [r for r in batch if r.model.adapter_key not in bad]

    def generator(self, model: Any = None) -> Any:
        """The Generator of ``model`` (default: the host's current model), built once per model
        object (a PeftModel replaces the base on the first adapter). Engine thread only."""
        model = self.host.model if model is None else model
        if self._gen is None or self._gen.model is not model:
            guides = self._gen.guides if self._gen is not None else None  # same tokenizer: reuse
            self._gen = self._gen_cls(model, self.host.tokenizer, guides=guides)
        return self._gen

    def _guided(self, batch: list[GenRequest], gen: Any) -> list[GenRequest]:
        """Give each JSON-mode request its grammar guide; a schema that fails to compile
        fails only its own request (400)."""
        from convtune.guided import SchemaError

        ok = []
        for r in batch:
            if isinstance(r, TaskRequest):  # a dialog makes its own guides, task by task
                ok.append(r)
                continue
            r.guide = None
            if r.sampling.schema is not None:
                try:
                    r.guide = gen.guides.guide(r.sampling.schema)
                except SchemaError as exc:
                    self._fail(r, APIError(400, f"unsupported JSON schema: {exc}", param="response_format"))
                    continue
            ok.append(r)
        return ok

    def _joinable(self, queue: deque) -> bool:
        """Whether the front of ``queue`` can join the running batch: its adapter is in memory
        (loading one could evict an adapter the batch uses)."""
        key = queue[0].model.adapter_key if queue else None
        return bool(queue) and (key is None or key in self.host.loaded)

    def _interactive_can_join(self) -> bool:
        return self._joinable(self._pending) and not self._jobs and not self._stopping

    def _take_joiners(self, loop: Any, parked: list) -> list[GenRequest]:
        """Queued requests that can join the running batch: from the front of the queue (FIFO),
        while :meth:`_joinable`, up to ``max_batch_size`` interactive rows (background rows are
        parked for them); background ones only while no interactive request is queued, running
        or parked-for, :data:`BACKGROUND_JOINS` at a time. Nothing joins while an exclusive job
        waits, so jobs are not starved."""
        interactive = sum(not s.owner.background for s in loop.seqs)
        taken: list[GenRequest] = []
        with self._cv:
            while interactive + len(taken) < self.max_batch_size and self._interactive_can_join():
                taken.append(self._pending.popleft())
            if self._pending or interactive or taken or parked:
                return taken
            room = min(self.max_batch_size - len(loop), BACKGROUND_JOINS)
            while (len(taken) < room and not self._jobs and not self._stopping
                   and self._joinable(self._background)):
                taken.append(self._background.popleft())
        return taken

    def _background_aside(self, loop: Any, parked: list) -> None:
        """Park the loop's background rows while interactive work can join or is decoding; take
        them back once none is left (a queued request that cannot join now, an adapter to load or
        an exclusive job waiting, does not hold them: the batch drains and ends for it)."""
        wanted = self._interactive_can_join() or any(not s.owner.background for s in loop.seqs)
        if wanted:
            rows = loop.park(lambda s: s.owner.background)
            if rows is not None:
                parked.append(rows)
                self.parks += 1
        elif parked:
            rows, parked[:] = list(parked), []
            for kv, seqs, logits in rows:
                self._ended(loop, loop.add(kv, seqs, logits))

    def _ended(self, loop: Any, ended: list) -> None:
        for s, kv in ended:
            if isinstance(s.owner, TaskRequest):
                self._dialog_answered(loop, s.owner, s, kv)
            else:
                self._finish(s.owner)

    def _run_batch(self, batch: list[GenRequest], joined: list[GenRequest]) -> None:
        """Decode ``batch`` to the end on the inference core's loop. Between decode steps,
        queued requests join it (continuous batching): they are prefilled on their own and
        their KV rows joined to the batch's. Joiners are appended to ``joined`` (the caller
        fails them on a crash)."""
        import torch

        from convtune.inference import DecodeLoop

        host = self.host
        batch = self._loadable(batch)
        if not batch:
            return
        aliases = host.ensure([r.model for r in batch])
        model = host.model
        gen = self.generator(model)
        batch = self._guided(batch, gen)
        if not batch:
            return
        mixed = model is not host.base_model
        self.batches += 1
        self.max_rows_seen = max(self.max_rows_seen, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch))
        loop = DecodeLoop(gen)
        parked: list = []  # background rows set aside while interactive work runs
        with torch.inference_mode():
            self._join(loop, gen, batch, aliases if mixed else None)
            while loop or parked:
                self._background_aside(loop, parked)
                for r in [s.owner for s in loop.seqs]:  # the client left, or the deadline passed
                    if r.cancelled.is_set():
                        r.seq.end("cancelled")
                    elif time.monotonic() > r.deadline:
                        r.seq.end("deadline")
                ended = loop.step()
                for s in loop.seqs:
                    if isinstance(s.owner, GenRequest):
                        self._emit_text(s.owner, s.take_text())
                self._ended(loop, ended)
                if (loop or parked) and (self._pending or self._background):
                    new = self._take_joiners(loop, parked)
                    joined.extend(new)
                    new = self._guided([r for r in new if not self._finish_if_stale(r)], gen)
                    if new:
                        self._join(loop, gen, new, host.ensure([r.model for r in new]) if mixed else None)
                        self.joins += len(new)
                        self.max_rows_seen = max(self.max_rows_seen, len(loop))

    def _join(self, loop: Any, gen: Any, reqs: list[GenRequest | TaskRequest], aliases: dict | None) -> None:
        """Prefill ``reqs`` and add them to the decode loop (``aliases``: adapter key -> PEFT
        adapter name, for a mixed-adapter batch)."""
        from convtune.inference import Seq

        for t in [r for r in reqs if isinstance(r, TaskRequest)]:
            self._start_dialog(loop, gen, t, aliases[t.model.adapter_key] if aliases is not None else None)
        reqs = [r for r in reqs if isinstance(r, GenRequest)]
        if not reqs:
            return
        names = [aliases[r.model.adapter_key] for r in reqs] if aliases is not None else None
        kv, logits = self._prefill(gen, [r.prompt_ids for r in reqs], names)
        for r in reqs:
            r.seq = Seq(gen, r.sampling, guide=r.guide, owner=r)
        for s, _ in loop.add(kv, [r.seq for r in reqs], logits):  # max_tokens 0
            self._finish(s.owner)

    def _prefill(self, gen: Any, prompts: list[list[int]], names: list[str] | None) -> tuple[Any, Any]:
        """Prefill each distinct (prompt, adapter) once and copy its KV row to every request that
        shares it (``n > 1``, best-of): (KV batch, last logits), one row per prompt."""
        keys = [(tuple(p), names[i] if names is not None else None) for i, p in enumerate(prompts)]
        first = {k: j for j, k in enumerate(dict.fromkeys(keys))}
        kv = gen.rows(len(first), reuse=False,
                      adapter_names=[k[1] for k in first] if names is not None else None)
        logits = kv.prefill([list(k[0]) for k in first])
        self.prefilled_rows += len(first)
        if len(first) == len(prompts):
            return kv, logits
        rows = [first[k] for k in keys]
        return kv.select(rows), logits[rows]

    def _start_dialog(self, loop: Any, gen: Any, r: TaskRequest, name: str | None) -> None:
        try:
            r.dialog = r.prepare(gen)
        except APIError as exc:
            self._fail(r, exc)
            return
        except Exception as exc:  # unreadable run files, a task that cannot be asked: this request only
            log.exception("analysis could not start")
            self._fail(r, APIError(500, f"analysis could not start: {type(exc).__name__}",
                                   type="server_error", code="internal_error"))
            return
        r.kv = gen.rows(1, adapter_names=[name] if name is not None else None)  # reuse: on
        self._next_task(loop, r)

    def _dialog_answered(self, loop: Any, r: TaskRequest, s: Any, kv: Any) -> None:
        """A dialog's decoded answer ended: record it, go on with its next task."""
        if s.finish == "cancelled":
            self._close(r)
        elif s.finish == "deadline":
            self._fail(r, _timeout())
        else:
            r.dialog.decoded(s)
            r.kv, r.seq = kv, None
            self._next_task(loop, r)

    def _next_task(self, loop: Any, r: TaskRequest) -> None:
        """Ask the dialog's next tasks: label tasks are scored at once; the first task that
        needs decoding joins the loop (its KV row comes back when it ends); the request is
        done when every task is answered."""
        while not r.done:
            if self._finish_if_stale(r):
                return
            if not r.dialog.next():
                self._close(r, Event("done", result=r.dialog))
                return
            logits = r.dialog.prefill(r.kv)
            self.prefilled_rows += 1
            if r.dialog.scored:
                r.dialog.score(r.kv, logits)
                continue
            r.seq = r.dialog.seq(owner=r)
            kv, r.kv = r.kv, None
            for s, back in loop.add(kv, [r.seq], logits):  # a zero budget ends at once
                r.dialog.decoded(s)
                r.kv = back
            if r.kv is None:
                return

    def _finish(self, r: GenRequest) -> None:
        """The request's seq ended: its last text and its done event (or its error)."""
        s = r.seq
        if s.finish == "cancelled":
            self._close(r)
        elif s.finish == "deadline":
            self._fail(r, _timeout())
        else:
            self._emit_text(r, s.take_text(), final=True)
            self._close(r, Event("done", finish_reason="length" if s.finish == "length" else "stop",
                                 prompt_tokens=len(r.prompt_ids), completion_tokens=len(s.out)))

    @staticmethod
    def _emit_text(r: GenRequest, piece: str, final: bool = False) -> None:
        if r.sampling.strip_links:
            if r.links is None:
                from serve.links import LinkStripper

                r.links = LinkStripper()
            piece = r.links.feed(piece) + (r.links.flush() if final else "")
        if piece:
            r.emit(Event("delta", text=piece))


def _timeout() -> APIError:
    return APIError(504, "the request did not finish before its deadline", code="deadline_exceeded")
