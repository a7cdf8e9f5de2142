"""Batches (OpenAI's Batch API): thousands of requests in one file, processed by the server's
batch runner at background priority, resumable after a crash.

Life of a batch::

    POST /v1/files purpose=batch   every line checked now (check_body: the route's own request
                                   model, hostile text, analyze conversations PII-redacted), every
                                   problem with its line and field; a file with any is unusable
    POST /v1/batches               validating (queued for a runner)
    BatchRunner (one per server)   claims it (a conditional UPDATE: one runner per batch; a runner
                                   whose heartbeat stops for batch_stale_s loses it to another)
                                   -> in_progress: lines go to the same route code a client calls
                                   (analyze, chat, embeddings), batch_concurrency at a time, as
                                   background engine work (parked while chat decodes); each line's
                                   result is committed as it finishes (unique per custom_id)
                                   -> finalizing: output and error files written in input order
                                   -> completed | cancelled (finished lines kept) | expired
                                   (+ a signed webhook, where one is set and allowed)

A runner killed mid-batch loses only the lines in flight: the next runner (this server restarted,
or another one on the same database) skips every ``custom_id`` that has a result and does the
rest, so every line appears exactly once in the output.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from convtune.jobs.db import BATCH_LIVE, JobsDB, new_id
from serve.context import ServerContext
from serve.errors import APIError, from_exception

log = logging.getLogger("convtune.serve.batches")

WINDOWS = {"24h": 24 * 3600}
HEARTBEAT_S = 2.0


# ---- upload: one line's body ------------------------------------------------------------------


def _request_model(url: str) -> Any:
    from serve.protocol import AnalyzeRequest, ChatCompletionRequest, EmbeddingRequest

    return {
        "/v1/conversations/analyze": AnalyzeRequest,
        "/v1/chat/completions": ChatCompletionRequest,
        "/v1/embeddings": EmbeddingRequest,
    }[url]


def check_body(
    url: str, body: dict[str, Any]
) -> tuple[list[tuple[str, str]], dict[str, Any], dict[str, Any]]:
    """``convtune.jobs.files.BatchCheck`` for the server's routes: the body against the route's
    request model (every error with its field), text a tokenizer cannot take, no streaming; an
    analyze conversation is PII-redacted here as the route would redact it (so no PII is stored),
    its counts kept with the line for the response."""
    from pydantic import ValidationError

    from convtune.text import first_text_problem

    found = first_text_problem(body)
    if found is not None:
        return [found], body, {}
    try:
        parsed = _request_model(url).model_validate(body)
    except ValidationError as exc:
        return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()], body, {}
    if getattr(parsed, "stream", False):
        return [("stream", "a batch request cannot stream")], body, {}
    if url != "/v1/conversations/analyze" or not parsed.redact:
        return [], body, {}
    from convtune.data import redact_all
    from serve.routes.analyze import _conversation

    try:
        (conv,), counts = redact_all([_conversation(parsed)])
    except APIError as exc:  # an invalid conversation (the route's own check)
        return [(exc.param or "conversation", str(exc))], body, {}
    messages = [
        {**m, "id": t.id, "text": t.text}
        for m, t in zip(body["conversation"]["messages"], conv.turns, strict=True)
    ]
    redacted = {**body, "redact": False, "conversation": {**body["conversation"], "messages": messages}}
    return [], redacted, {"redactions": dict(counts)}


# ---- the API objects ----------------------------------------------------------------------------


def batch_object(db: JobsDB, row: dict[str, Any]) -> dict[str, Any]:
    completed, failed = db.batch_counts(row["id"])
    keys = (
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    )
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": row["errors"]} if row["errors"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        **{k: row[k] for k in keys},
        "request_counts": {"total": row["total"], "completed": completed, "failed": failed},
        "metadata": row["user_metadata"],
    }


def create_batch(db: JobsDB, tenant: str, body: Any) -> dict[str, Any]:
    """Check the input file (the caller's, a processed batch file whose every line is for
    ``endpoint``) and queue the batch."""
    f = db.get_file(tenant, body.input_file_id)
    if f is None:
        raise APIError(
            404, f"file {body.input_file_id!r} not found", param="input_file_id", code="file_not_found"
        )
    if f["purpose"] != "batch":
        raise APIError(
            400, f"file {f['id']!r} has purpose {f['purpose']!r}, not batch", param="input_file_id"
        )
    if f["status"] != "processed":
        first = (f["status_details"] or "").splitlines()[0] if f["status_details"] else ""
        raise APIError(
            400,
            f"file {f['id']!r} is not usable (status {f['status']}): {first}",
            param="input_file_id",
            code="invalid_file",
        )
    urls = sorted((f.get("info") or {}).get("urls", {}))
    if urls != [body.endpoint]:
        raise APIError(
            400,
            f"every line of the file must be for {body.endpoint} (the file has {', '.join(urls)})",
            param="endpoint",
        )
    now = int(time.time())
    row = {
        "id": new_id("batch"),
        "tenant": tenant,
        "input_file_id": f["id"],
        "endpoint": body.endpoint,
        "completion_window": body.completion_window,
        "user_metadata": body.metadata,
        "status": "validating",
        "total": f["records"] or 0,
        "created_at": now,
        "created_ts": time.time(),
        "expires_at": now + WINDOWS[body.completion_window],
    }
    db.add_batch(row)
    return batch_object(db, db.get_batch(row["id"]))


def cancel_batch(db: JobsDB, tenant: str, batch_id: str) -> dict[str, Any]:
    row = db.get_batch(batch_id, tenant)
    if row is None:
        raise APIError(404, f"batch {batch_id!r} not found", param="batch_id", code="batch_not_found")
    if row["status"] in ("validating", "in_progress"):
        db.update_batch(
            batch_id,
            where_status=["validating", "in_progress"],
            status="cancelling",
            cancelling_at=int(time.time()),
        )
    elif row["status"] != "cancelling":
        raise APIError(
            409,
            f"batch {batch_id!r} is {row['status']} and cannot be cancelled",
            param="batch_id",
            code="batch_not_cancellable",
        )
    return batch_object(db, db.get_batch(batch_id))


# ---- webhooks -----------------------------------------------------------------------------------


def webhook_secret(home: Path, tenant: str) -> str:
    """The tenant's signing secret: an HMAC of the tenant under the server's own key (made once,
    ``HOME/webhook.key``, readable by the server's user only)."""
    path = Path(home) / "webhook.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return hmac.new(path.read_bytes(), f"webhook:{tenant}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes) -> str:
    """The ``X-Convtune-Signature`` header of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_allowed(url: str, allow: str) -> bool:
    """http(s) to a host on the operator's allow-list (names or addresses, compared as written)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    hosts = {h.strip().lower() for h in allow.split(",") if h.strip()}
    return parts.scheme in ("http", "https") and (parts.hostname or "").lower() in hosts


def deliver_webhook(
    ctx: ServerContext, row: dict[str, Any], obj: dict[str, Any], delays: tuple[float, ...] = (0, 1, 2, 4, 8)
) -> None:
    """POST the finished batch to its webhook, signed, retried with backoff; redirects are not
    followed. The outcome is kept on the batch (``webhook``)."""
    import urllib.error
    import urllib.request

    url = (row["user_metadata"] or {}).get("webhook_url") or ctx.settings.webhook_url
    if not url:
        return
    db = ctx.jobs_db
    if not webhook_allowed(url, ctx.settings.webhook_allow):
        log.warning("batch %s: webhook host not allowed: %s", row["id"], url)
        db.update_batch(row["id"], webhook={"url": url, "delivered": False, "error": "host not allowed"})
        return
    body = json.dumps(obj).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Convtune-Batch": row["id"],
        "X-Convtune-Signature": sign(webhook_secret(ctx.settings.home, row["tenant"]), body),
    }

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect)
    state: dict[str, Any] = {"url": url, "delivered": False, "attempts": 0}
    for delay in delays:
        time.sleep(delay)
        state["attempts"] += 1
        try:
            with opener.open(
                urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout=10
            ) as r:
                state.update(status=r.status, delivered=200 <= r.status < 300)
        except urllib.error.HTTPError as exc:
            state.update(status=exc.code, error=f"HTTP {exc.code}")
        except OSError as exc:
            state.update(status=None, error=str(exc))
        if state["delivered"]:
            state.pop("error", None)
            break
    db.update_batch(row["id"], webhook=state)


# ---- the runner ---------------------------------------------------------------------------------


class _Caller:
    """What a route reads from its ``Request`` (the app's context, the tenant, the request id,
    whether the client left), for a batch line the server runs on a tenant's behalf: the route
    code is the one clients call, at background priority (``bridge._background``)."""

    def __init__(self, ctx: ServerContext, tenant: str, request_id: str, stop: asyncio.Event):
        self.app = SimpleNamespace(state=SimpleNamespace(ctx=ctx))
        self.state = SimpleNamespace(tenant=tenant, request_id=request_id, background=True)
        self._stop = stop

    async def is_disconnected(self) -> bool:
        return self._stop.is_set()


def _handler(url: str) -> Any:
    from serve.routes import analyze, openai_api

    return {
        "/v1/conversations/analyze": analyze.analyze,
        "/v1/chat/completions": openai_api.chat_completions,
        "/v1/embeddings": openai_api.embeddings,
    }[url]


def _write_output(
    ctx: ServerContext, row: dict[str, Any], records: list[dict[str, Any]], kind: str
) -> str | None:
    """A ``batch_output`` file of the tenant holding ``records`` (None when there are none)."""
    if not records:
        return None
    from convtune.jobs.files import file_dir

    file_id = new_id("file")
    folder = file_dir(ctx.settings.home, row["tenant"], file_id)
    folder.mkdir(parents=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    tmp = folder / "processed.jsonl.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(folder / "processed.jsonl")
    ctx.jobs_db.add_file(
        {
            "id": file_id,
            "tenant": row["tenant"],
            "filename": f"{row['id']}_{kind}.jsonl",
            "purpose": "batch_output",
            "bytes": len(text.encode()),
            "created_at": int(time.time()),
            "status": "processed",
            "status_details": None,
            "kind": "batch_output",
            "records": len(records),
        }
    )
    return file_id


class BatchRunner:
    """Processes batches on a thread of its own (never a request's): claims one at a time, feeds
    its lines to the routes ``concurrency`` at a time, commits each line's result, finalizes."""

    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines_done = 0  # lines this runner recorded (tests, metrics)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="convtune-batches", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking lines; lines in flight are cancelled and left for the next runner."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        from convtune.inference.quantize import single_openmp_thread

        single_openmp_thread()  # a helper thread: no OpenMP team next to the engine's
        s = self.ctx.settings
        while not self._stop.is_set():
            try:
                row = self.ctx.jobs_db.claim_batch(self.id, stale_s=s.batch_stale_s)
                if row is None:
                    self._stop.wait(s.batch_poll_s)
                    continue
                asyncio.run(self.process(row))
            except Exception:  # a database hiccup or a bug: keep the runner alive
                log.exception("batch runner error")
                self._stop.wait(s.batch_poll_s)

    async def process(self, row: dict[str, Any]) -> None:
        """Take a claimed batch as far as it goes: its remaining lines, then its end state."""
        db, batch_id = self.ctx.jobs_db, row["id"]
        if row["status"] == "validating":
            db.update_batch(
                batch_id, where_status=["validating"], status="in_progress", in_progress_at=int(time.time())
            )
            row = db.get_batch(batch_id)
        why = await self._lines(row) if row["status"] == "in_progress" else None
        if why == "lost":
            return  # another runner took it over (this one stalled past batch_stale_s)
        if why == "shutdown":
            db.update_batch(batch_id, worker=None)  # the next runner goes on where this one stopped
            return
        row = db.get_batch(batch_id)
        if row["status"] == "cancelling":
            final = "cancelled"
        elif why == "expired" or (row["status"] == "in_progress" and time.time() > row["expires_at"]):
            final = "expired"
        elif row["status"] in ("in_progress", "finalizing"):
            final = "completed"
        else:
            return
        await asyncio.to_thread(self.finalize, batch_id, final)

    async def _lines(self, row: dict[str, Any]) -> str:
        """Run the lines without a result; why it stopped: done, cancelled, expired, lost, shutdown."""
        from convtune.jobs.files import processed_path

        db, ctx = self.ctx.jobs_db, self.ctx
        f = db.get_file(row["tenant"], row["input_file_id"])
        path = processed_path(ctx.settings.home, row["tenant"], row["input_file_id"]) if f else None
        if path is None or not path.is_file():
            db.update_batch(
                row["id"],
                status="failed",
                failed_at=int(time.time()),
                worker=None,
                errors=[{"code": "input_file_missing", "message": "the input file is gone"}],
            )
            return "failed"
        done = {r["custom_id"] for r in db.batch_results(row["id"])}
        todo = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        todo = [r for r in todo if r["custom_id"] not in done]
        stop = asyncio.Event()  # cancel, expiry, shutdown or lost: no new lines; lines in flight end
        why: dict[str, str] = {}
        sem = asyncio.Semaphore(ctx.settings.batch_concurrency)
        beat = asyncio.create_task(self._heartbeat(row, stop, why))

        async def one(rec: dict[str, Any]) -> None:
            async with sem:
                if not stop.is_set():
                    await self._line(row, rec, stop)

        try:
            await asyncio.gather(*(one(r) for r in todo))
        finally:
            beat.cancel()
        if stop.is_set():
            return why.get("why", "shutdown")
        db.update_batch(
            row["id"], where_status=["in_progress"], status="finalizing", finalizing_at=int(time.time())
        )
        return "done"

    async def _heartbeat(self, row: dict[str, Any], stop: asyncio.Event, why: dict[str, str]) -> None:
        """Every HEARTBEAT_S: keep the claim; stop the lines on shutdown, cancel, expiry or a lost claim."""
        db = self.ctx.jobs_db
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            current = await asyncio.to_thread(db.get_batch, row["id"])
            reason = (
                "shutdown"
                if self._stop.is_set()
                else "lost"
                if current is None or current["worker"] != self.id
                else "cancelled"
                if current["status"] == "cancelling"
                else "expired"
                if time.time() > current["expires_at"]
                else None
            )
            if reason is not None:
                why["why"] = reason
                stop.set()
                return
            await asyncio.to_thread(db.update_batch, row["id"], heartbeat_at=time.time())

    async def _line(self, row: dict[str, Any], rec: dict[str, Any], stop: asyncio.Event) -> None:
        url, rid = rec["url"], f"batch_req_{uuid.uuid4().hex[:24]}"
        caller = _Caller(self.ctx, row["tenant"], rid, stop)
        try:
            work = asyncio.ensure_future(
                _handler(url)(_request_model(url).model_validate(rec["body"]), caller)
            )
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if not work.done():  # the batch stopped: the line is dropped (cancelling it frees the engine)
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return
            body = work.result()
            status = 200
            if rec.get("redactions") is not None:
                body = {**body, "redactions": rec["redactions"]}  # redacted on upload, as analyze counts them
        except Exception as exc:
            if stop.is_set():
                return  # cancelled by the batch's end or the shutdown: not a result, done again on resume
            err = from_exception(exc)
            if err.status >= 500:
                log.error("batch %s line %s failed: %s", row["id"], rec["custom_id"], exc)
            status, body = err.status, err.body()
        record = {
            "id": rid,
            "custom_id": rec["custom_id"],
            "response": {"status_code": status, "request_id": rid, "body": body},
            "error": None,
        }
        if await asyncio.to_thread(
            self.ctx.jobs_db.add_batch_result,
            row["id"],
            rec["custom_id"],
            rec["line"],
            200 <= status < 300,
            record,
        ):
            self.lines_done += 1

    def finalize(self, batch_id: str, final: str) -> None:
        """Write the output and error files (input order) and end the batch; signals its webhook."""
        db = self.ctx.jobs_db
        row = db.get_batch(batch_id)
        if row is None or row["status"] not in BATCH_LIVE:
            return
        results = db.batch_results(batch_id)
        out = row["output_file_id"] or _write_output(
            self.ctx, row, [r["record"] for r in results if r["ok"]], "output"
        )
        err = row["error_file_id"] or _write_output(
            self.ctx, row, [r["record"] for r in results if not r["ok"]], "error"
        )
        db.update_batch(batch_id, output_file_id=out, error_file_id=err)
        at = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
        if not db.update_batch(
            batch_id, where_status=list(BATCH_LIVE), status=final, worker=None, **{at: int(time.time())}
        ):
            return
        row = db.get_batch(batch_id)
        threading.Thread(
            target=deliver_webhook,
            args=(self.ctx, row, batch_object(db, row)),
            name="convtune-webhook",
            daemon=True,
        ).start()
