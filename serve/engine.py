"""The engine: one thread owns the model; requests queue, batch, decode, stream back.

Request path::

    route --submit()--> pending queue (bounded: over capacity -> 429 at once)
                           |  engine thread: take up to max_batch_size requests
                           v  (waiting batch_wait_ms for more), load their adapters
                        prefill together (left padding, one KV cache, PEFT mixed adapters)
                           v
                        decode step by step; each row samples with its own
                        temperature/top_p/seed (among the tokens its JSON schema
                        allows, if any), stops on an end-of-turn token, a stop
                        string, max_tokens, its deadline or a cancel (client gone)
                           v
                        events -> the request's callback (the route bridges them
                        into its asyncio loop)

Finished rows leave the batch (their cache rows are dropped), so a long answer
does not make short ones pay, and queued requests join a running batch between
decode steps (continuous batching: prefilled on their own, their cache rows
merged in), so a request arriving mid-batch does not wait for it to finish.
Work that needs the model exclusively (call analytics' chained tasks, which
reuse one KV cache across several answers) is queued as a job and runs between
batches on the same thread; while one waits, nothing joins the running batch.

Greedy decoding is deterministic and independent of what else is in the batch
up to float rounding of padded matmuls; ``tests/test_serve.py`` checks
mixed-adapter batches and requests joining a running batch against solo runs
byte for byte.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve.errors import APIError, overloaded
from serve.models import ModelHost, ModelRef

log = logging.getLogger("convtune.serve")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # CTRL-style: >1 discourages tokens already generated
    schema: dict[str, Any] | None = None  # JSON schema the output follows (grammar-guided)
    strip_links: bool = False  # markdown links/images -> their text (answers grounded in retrieval)


@dataclass
class Event:
    """``kind``: "delta" (new text), "done" (finish_reason, usage) or "error" (an APIError)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: APIError | None = None


@dataclass
class GenRequest:
    prompt_ids: list[int]
    model: ModelRef
    sampling: Sampling
    emit: Callable[[Event], None]  # called on the engine thread
    deadline: float  # time.monotonic() by which it must finish
    tenant: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    # decode state
    out: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    done: bool = False
    guide: Any = None  # convtune.guided.Guide while decoding a JSON-mode request
    links: Any = None  # serve.links.LinkStripper when sampling.strip_links
    detok: Any = None  # convtune.inference.Detokenizer of ``out``, made on the first token

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
        from convtune.evaluation.generate import Generator

        self.host = host
        self.max_batch_size = max_batch_size
        self.max_inflight = max_inflight
        self.batch_wait = batch_wait_ms / 1000
        self.on_batch = on_batch
        self._gen_cls = Generator
        self._gen: Any = None  # built once per model object (it inspects the model), not per batch
        self._cv = threading.Condition()
        self._pending: deque[GenRequest] = deque()
        self._jobs: deque[_Job] = deque()
        self._inflight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run (for tests and metrics)
        self.joins = 0  # requests that joined a running batch
        self.max_rows_seen = 0
        self.prefilled_rows = 0  # prompts prefilled (a prompt shared by n rows counts once)

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
            for req in self._pending:
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

    # ---- admission (any thread) ---------------------------------------------------------------

    def _admit(self, n: int) -> None:
        if self._stopping:
            raise APIError(
                503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"}
            )
        if self._inflight + n > self.max_inflight:
            raise overloaded()
        self._inflight += n

    def submit(self, requests: list[GenRequest]) -> None:
        """Queue requests (all or none); raises 429/503 APIError when over capacity."""
        with self._cv:
            self._admit(len(requests))
            self._pending.extend(requests)
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
            self._release()

    # ---- the loop (engine thread) ---------------------------------------------------------------

    def _loop(self) -> None:
        from convtune.inference.quantize import engine_thread_setup

        engine_thread_setup(self.host.model)
        while True:
            with self._cv:
                while not self._pending and not self._jobs and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._pending and not self._jobs:
                    return
                job = self._jobs.popleft() if self._jobs else None
            if job is not None:
                self._run_job(job)
                continue
            if self.batch_wait and len(self._pending) < self.max_batch_size:
                time.sleep(self.batch_wait)  # let concurrent requests join this batch
            with self._cv:
                batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
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
            r.guide = None
            if r.sampling.schema is not None:
                try:
                    r.guide = gen.guides.guide(r.sampling.schema)
                except SchemaError as exc:
                    self._fail(r, APIError(400, f"unsupported JSON schema: {exc}", param="response_format"))
                    continue
            ok.append(r)
        return ok

    def _take_joiners(self, limit: int) -> list[GenRequest]:
        """Queued requests that can join the running batch: from the front of the queue (FIFO),
        while their adapter is already in memory (loading one could evict an adapter the batch
        uses). Nothing joins while an exclusive job waits, so jobs are not starved."""
        taken: list[GenRequest] = []
        with self._cv:
            while self._pending and len(taken) < limit and not self._jobs and not self._stopping:
                key = self._pending[0].model.adapter_key
                if key is not None and key not in self.host.loaded:
                    break
                taken.append(self._pending.popleft())
        return taken

    def _run_batch(self, batch: list[GenRequest], joined: list[GenRequest]) -> None:
        """Decode ``batch`` to the end. Between decode steps, queued requests join it
        (continuous batching): they are prefilled on their own and their KV cache rows are
        merged into the batch's. Joiners are appended to ``joined`` (the caller releases and,
        on a crash, fails them)."""
        import torch

        from convtune.guided import mask_rows_

        host = self.host
        batch = self._loadable(batch)
        if not batch:
            return
        aliases = host.ensure([r.model for r in batch])
        names = [aliases[r.model.adapter_key] for r in batch]
        batch = list(batch)  # joiners are appended
        model = host.model
        gen = self.generator(model)
        batch = self._guided(batch, gen)
        if not batch:
            return
        mixed = names if model is not host.base_model else None
        self.batches += 1
        self.max_rows_seen = max(self.max_rows_seen, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch))
        samplers = [_Sampler(r.sampling, torch) for r in batch]
        guides = [r.guide for r in batch]
        with torch.inference_mode():
            logits, cache, mask = self._prefill(gen, [r.prompt_ids for r in batch], mixed)
            group = list(range(len(batch)))  # batch rows still decoding, in cache order
            positions = [len(r.prompt_ids) for r in batch]
            while True:
                mask_rows_(logits, [guides[i] for i in group])  # every JSON-mode row in one pass
                nxt = [samplers[i].pick(logits[g], batch[i].out) for g, i in enumerate(group)]
                for g, i in enumerate(group):
                    if guides[i] is not None and not batch[i].done:
                        guides[i].advance(nxt[g])
                    self._advance(batch[i], nxt[g], gen.stop_ids, host.tokenizer)
                running = [g for g, i in enumerate(group) if not batch[i].done]
                if not running:
                    break
                if len(running) < len(group):  # finished rows leave the batch (their slots are free)
                    idx = torch.tensor(running, dtype=torch.long, device=gen.device)
                    from transformers import DynamicCache

                    cache = DynamicCache(
                        [
                            (layer.keys.index_select(0, idx), layer.values.index_select(0, idx))
                            for layer in cache.layers
                        ]
                    )
                    mask = mask.index_select(0, idx)
                    nxt = [nxt[g] for g in running]
                    group = [group[g] for g in running]
                ids = torch.tensor([[t] for t in nxt], dtype=torch.long, device=gen.device)
                pos = torch.tensor([[positions[i]] for i in group], dtype=torch.long, device=gen.device)
                for i in group:
                    positions[i] += 1
                mask = torch.cat([mask, mask.new_ones(len(group), 1)], dim=1)
                extra = {"adapter_names": [names[i] for i in group]} if mixed is not None else {}
                out = gen.forward(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    cache=cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **extra,
                )
                logits = out.logits[:, -1, :].float()
                if len(group) < self.max_batch_size and self._pending:
                    new = self._take_joiners(self.max_batch_size - len(group))
                    joined.extend(new)
                    new = self._guided([r for r in new if not self._finish_if_stale(r)], gen)
                    if new:
                        first = len(batch)
                        new_aliases = host.ensure([r.model for r in new])  # all in memory: no load
                        new_names = [new_aliases[r.model.adapter_key] for r in new]
                        new_logits, new_cache, new_mask = self._prefill(
                            gen, [r.prompt_ids for r in new], new_names if mixed is not None else None)
                        cache, mask = _merge_caches(cache, mask, new_cache, new_mask)
                        logits = torch.cat([logits, new_logits])
                        batch.extend(new)
                        names.extend(new_names)
                        samplers.extend(_Sampler(r.sampling, torch) for r in new)
                        guides.extend(r.guide for r in new)
                        positions.extend(len(r.prompt_ids) for r in new)
                        group.extend(range(first, len(batch)))
                        self.joins += len(new)
                        self.max_rows_seen = max(self.max_rows_seen, len(group))

    def _prefill(self, gen: Any, prompts: list[list[int]], names: list[str] | None) -> tuple[Any, Any, Any]:
        """Prefill each distinct (prompt, adapter) once and copy its cache row to every request that
        shares it (``n > 1``, best-of): (last logits, KV cache, mask), one row per prompt."""
        import torch
        from transformers import DynamicCache

        keys = [(tuple(p), names[i] if names is not None else None) for i, p in enumerate(prompts)]
        first = {k: j for j, k in enumerate(dict.fromkeys(keys))}
        rows = gen.rows(len(first), reuse=False,
                        adapter_names=[k[1] for k in first] if names is not None else None)
        logits = rows.prefill([list(k[0]) for k in first])
        self.prefilled_rows += len(first)
        if len(first) == len(prompts):
            return logits, rows.cache, rows.mask
        idx = torch.tensor([first[k] for k in keys], dtype=torch.long, device=gen.device)
        cache = DynamicCache([(layer.keys.index_select(0, idx), layer.values.index_select(0, idx))
                              for layer in rows.cache.layers])
        return logits.index_select(0, idx), cache, rows.mask.index_select(0, idx)

    def _advance(self, r: GenRequest, token: int, stop_ids: set[int], tokenizer: Any) -> None:
        """Append one token to ``r``; emit new text; finish on stop/limits/deadline/cancel."""
        if r.done:
            return
        if r.cancelled.is_set():
            self._close(r)
            return
        if time.monotonic() > r.deadline:
            self._fail(r, _timeout())
            return
        stopped = token in stop_ids
        if r.detok is None:
            from convtune.inference import Detokenizer

            r.detok = Detokenizer(tokenizer)
        if not stopped:
            r.out.append(token)
            r.detok.push(token)  # the new text from a short window: no re-decoding of the whole output
        text = r.detok.text
        finish = "stop" if stopped else None
        cut = _find_stop(text, r.sampling.stop, max(0, r.sent - _longest(r.sampling.stop)))
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif finish is None and len(r.out) >= r.sampling.max_tokens:
            finish = "length"
        if finish is None:
            # hold back what could still become a stop string, and half-decoded characters
            safe = len(text) - max(0, _longest(r.sampling.stop) - 1)
            while safe > r.sent and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > r.sent:
                self._emit_text(r, text[r.sent : safe])
                r.sent = safe
            return
        if cut is None:
            text += r.detok.flush()  # an unfinished character at the very end, as a full decode shows it
        self._emit_text(r, text[r.sent :], final=True)
        r.sent = len(text)
        self._close(r, Event("done", finish_reason=finish, prompt_tokens=len(r.prompt_ids),
                             completion_tokens=len(r.out)))


    @staticmethod
    def _emit_text(r: GenRequest, piece: str, final: bool = False) -> None:
        if r.sampling.strip_links:
            if r.links is None:
                from serve.links import LinkStripper

                r.links = LinkStripper()
            piece = r.links.feed(piece) + (r.links.flush() if final else "")
        if piece:
            r.emit(Event("delta", text=piece))


MIN_TEMPERATURE = 1e-3  # smaller temperatures decode greedily (their limit), never 0/0 in fp32


class _Sampler:
    """Greedy at temperature 0; otherwise temperature + top-k + nucleus (top_p) sampling with
    the request's own seeded generator, so a seed reproduces its output whatever the batch."""

    def __init__(self, s: Sampling, torch: Any):
        self.torch = torch
        self.s = s
        self.gen = None
        if s.temperature >= MIN_TEMPERATURE and s.top_k != 1:  # below it: the greedy limit (fp32-safe)
            self.gen = torch.Generator()
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.gen.manual_seed(seed)

    def pick(self, logits: Any, previous: list[int]) -> int:
        torch = self.torch
        s = self.s
        if s.repetition_penalty != 1.0 and previous:
            logits = logits.clone()
            seen = torch.tensor(sorted(set(previous)), dtype=torch.long, device=logits.device)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
        if self.gen is None:
            return int(logits.argmax())
        logits = logits.float().cpu()
        logits = (logits - logits.max()) / s.temperature  # max first: a tiny temperature gives -inf, not NaN
        if s.top_k > 1:
            kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
            logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # always keeps the most likely token
            sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
            return int(order[torch.multinomial(sorted_p, 1, generator=self.gen)])
        return int(torch.multinomial(probs, 1, generator=self.gen))


def _merge_caches(cache_a: Any, mask_a: Any, cache_b: Any, mask_b: Any) -> tuple[Any, Any]:
    """Stack two batches' KV caches (rows of ``b`` after rows of ``a``), left-padding the
    narrower one with masked zero columns. Keys are stored rotated (RoPE applied at their own
    positions), so a column's index changes nothing a token attends to."""
    import torch
    from transformers import DynamicCache

    width = max(mask_a.shape[1], mask_b.shape[1])

    def pad(t: Any, n: int) -> Any:
        if n == 0:
            return t
        return torch.cat([t.new_zeros(*t.shape[:2], n, *t.shape[3:]), t], dim=2)

    layers = []
    for la, lb in zip(cache_a.layers, cache_b.layers):
        wa, wb = width - la.keys.shape[2], width - lb.keys.shape[2]
        layers.append((torch.cat([pad(la.keys, wa), pad(lb.keys, wb)]),
                       torch.cat([pad(la.values, wa), pad(lb.values, wb)])))
    masks = [torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], dim=1) for m in (mask_a, mask_b)]
    return DynamicCache(layers), torch.cat(masks)


def _longest(stop: tuple[str, ...]) -> int:
    return max((len(s) for s in stop), default=0)


def _find_stop(text: str, stop: tuple[str, ...], start: int) -> int | None:
    found = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(found) if found else None


def _timeout() -> APIError:
    return APIError(504, "the request did not finish before its deadline", code="deadline_exceeded")
