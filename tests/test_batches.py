"""Batches (OpenAI's Batch API) on the tiny model: the official client end to end, results equal
to one-by-one analyze, validation of the whole file, cancel, tenancy, background priority in the
engine, webhooks, and a server killed with SIGKILL mid-batch whose successor finishes it."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import EXAMPLES
from .serve_helpers import CORE, make_server, over_http

openai = pytest.importorskip("openai")

ANALYZE = "/v1/conversations/analyze"
VOLATILE = ("id", "created", "conversation_id", "usage")  # differ between any two analyze calls


def stable(analysis: dict) -> dict:
    """An analyze response without what differs between two calls (ids, timestamps, timings)."""
    out = {k: v for k, v in analysis.items() if k not in VOLATILE}
    out["analytics"] = {k: v for k, v in out["analytics"].items() if k != "conversation_id"}
    return out


def analyze_body(conv: dict, tasks=CORE) -> dict:
    messages = [
        {k: t[k] for k in ("id", "speaker", "text", "start", "end") if t.get(k) is not None}
        for t in conv["turns"]
    ]
    return {"model": "tiny-base", "tasks": list(tasks), "conversation": {"messages": messages}}


def sample_conversations(n: int) -> list[dict]:
    return [json.loads(x) for x in (EXAMPLES / "test.jsonl").read_text().splitlines()[:n]]


def batch_file(tmp: Path, lines: list[dict], name: str = "batch.jsonl") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def analyze_lines(n: int) -> list[dict]:
    return [
        {"custom_id": f"call-{i}", "method": "POST", "url": ANALYZE, "body": analyze_body(c)}
        for i, c in enumerate(sample_conversations(n))
    ]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    srv = make_server(
        tiny_model_dir,
        tmp_path_factory.mktemp("batch-home"),
        {},
        batch_poll_s=0.2,
        batch_concurrency=4,
        max_tokens_limit=2048,  # long lines for the cancel test
    )
    with TestClient(srv.app) as client:  # the lifespan starts the engine and the batch runner
        srv.client = client
        yield srv


def client_for(server, key):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=server.client, max_retries=0
    )


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def finished(oai, batch_id, timeout=180):
    def done():
        b = oai.batches.retrieve(batch_id)
        return b if b.status in ("completed", "failed", "expired", "cancelled") else None

    return wait_for(done, timeout, f"batch {batch_id} to finish")


def test_the_openai_client_runs_a_batch_whose_lines_equal_one_by_one_analyze(server, tmp_path):
    oai = client_for(server, server.acme)
    lines = analyze_lines(3)
    with open(batch_file(tmp_path, lines), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    assert f.status == "processed" and f.purpose == "batch"
    batch = oai.batches.create(
        input_file_id=f.id, endpoint=ANALYZE, completion_window="24h", metadata={"run": "nightly"}
    )
    assert (
        batch.status == "validating"
        and batch.request_counts.total == 3
        and batch.metadata == {"run": "nightly"}
    )
    done = finished(oai, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (
        3,
        0,
    ) and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["call-0", "call-1", "call-2"]  # input order
    for o, line in zip(out, lines):
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert o["response"]["request_id"] == o["id"]
        direct = server.client.post(ANALYZE, headers=auth(server.acme), json=line["body"]).json()
        got = o["response"]["body"]
        assert stable(got) == stable(direct)  # greedy: the same answers, the same redaction
    assert any(o["response"]["body"]["redactions"] for o in out)  # PII was redacted (on upload)
    stored = server.client.get(f"/v1/files/{f.id}/content", headers=auth(server.acme)).text
    assert "jay" not in stored.lower().split("this is ")[1][:5]  # the stored input holds no names
    assert oai.batches.list(limit=10).data[0].id == batch.id
    # another tenant sees neither the batch nor its files
    other = client_for(server, server.globex)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(done.output_file_id)
    assert other.batches.list().data == []


def test_a_malformed_batch_file_lists_every_problem_and_starts_nothing(server, tmp_path):
    oai = client_for(server, server.acme)
    good = analyze_lines(1)[0]
    chat = {
        "custom_id": "c",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "custom_id": "call-0"}),  # duplicate
        json.dumps({**good, "custom_id": "x3", "method": "GET"}),
        json.dumps({**good, "custom_id": "x4", "url": "/v1/fine_tuning/jobs"}),
        json.dumps({"custom_id": "x5", "method": "POST", "url": ANALYZE, "body": {"model": "tiny-base"}}),
        json.dumps(chat),
        json.dumps({"method": "POST", "url": ANALYZE, "body": good["body"], "extra": 1}),
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = len(oai.batches.list(limit=100).data)
    with open(path, "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    assert f.status == "error"
    problems = {(p["line"], p["field"]) for p in f.to_dict()["problems"]}
    assert {
        (2, None),
        (3, "custom_id"),
        (4, "method"),
        (5, "url"),
        (6, "body.conversation"),
        (7, "body.stream"),
        (8, "custom_id"),
        (8, "extra"),
    } <= problems, problems
    assert (
        "broken.jsonl:3" in f.status_details
        and "duplicate custom_id 'call-0' (first on line 1)" in f.status_details
    )
    with pytest.raises(openai.BadRequestError) as err:
        oai.batches.create(input_file_id=f.id, endpoint=ANALYZE, completion_window="24h")
    assert err.value.body["param"] == "input_file_id"
    assert len(oai.batches.list(limit=100).data) == before
    with open(batch_file(tmp_path, [good]), "rb") as fh:
        ok = oai.files.create(file=fh, purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:  # every line must be for the endpoint
        oai.batches.create(input_file_id=ok.id, endpoint="/v1/embeddings", completion_window="24h")
    assert err.value.body["param"] == "endpoint"
    with pytest.raises(openai.BadRequestError):  # a batch file cannot train
        oai.fine_tuning.jobs.create(training_file=ok.id, model="tiny-base")


def test_chat_and_embedding_batches_and_errors_per_line(server, tmp_path):
    oai = client_for(server, server.acme)
    ask = [{"role": "user", "content": "My card was charged twice."}]
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny-base", "messages": ask, "max_tokens": 6},
        }
        for i in range(3)
    ]
    lines.append(
        {
            "custom_id": "missing-model",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "ft:nope", "messages": ask, "max_tokens": 4},
        }
    )
    with open(batch_file(tmp_path, lines), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    done = finished(
        oai,
        oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id,
    )
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (
        3,
        1,
    )
    direct = (
        oai.chat.completions.create(model="tiny-base", messages=ask, max_tokens=6).choices[0].message.content
    )
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert {o["response"]["body"]["choices"][0]["message"]["content"] for o in out} == {direct}
    err = [json.loads(x) for x in oai.files.content(done.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "missing-model" and err[0]["response"]["status_code"] == 404
    assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"
    emb = [
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-minilm-l6-v2", "input": ["refund please"], "encoding_format": "float"},
        }
    ]
    with open(batch_file(tmp_path, emb, "emb.jsonl"), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    done = finished(
        oai, oai.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id
    )
    vec = json.loads(oai.files.content(done.output_file_id).text)["response"]["body"]["data"][0]["embedding"]
    assert len(vec) == 384


def test_cancel_keeps_the_finished_lines(server, tmp_path):
    oai = client_for(server, server.acme)
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny-base",
                "messages": [{"role": "user", "content": f"Question {i}?"}],
                # two short lines finish at once; the rest cannot end before the cancel is seen
                # (the runner checks for it every HEARTBEAT_S; 40 x 48 tiny tokens took less)
                "max_tokens": 4 if i < 2 else 2000,
            },
        }
        for i in range(40)
    ]
    with open(batch_file(tmp_path, lines), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    batch = oai.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: oai.batches.retrieve(batch.id).request_counts.completed >= 2, 120, "two lines")
    assert oai.batches.cancel(batch.id).status == "cancelling"
    done = finished(oai, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    n = done.request_counts.completed
    assert 2 <= n < 40
    out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
    assert len(out) == n and len({o["custom_id"] for o in out}) == n
    with pytest.raises(openai.ConflictError):
        oai.batches.cancel(batch.id)


def test_background_work_is_parked_while_chat_decodes(server):
    """Engine level: background rows make way for an interactive request, which then decodes alone."""
    from serve.engine import Event, GenRequest, Sampling

    host, engine = server.ctx.require_engine()
    ref = host.resolve("acme", "tiny-base")
    prompt = host.renderer.encode_chat([{"role": "user", "content": "Tell me about refunds."}]).input_ids
    order: list[str] = []
    tokens: dict[str, int] = {}
    chat_done = threading.Event()
    bg_steps: dict[str, int] = {}  # decoded background tokens, when the chat request came / ended

    def emit(name):
        def on(ev: Event) -> None:
            if ev.kind in ("done", "error"):
                order.append(name)
                if name == "chat":
                    bg_steps["end"] = sum(len(r.seq.out) for r in background)
                    chat_done.set()
            else:
                tokens[name] = tokens.get(name, 0) + 1

        return on

    far = time.monotonic() + 120
    background = [  # long enough that they cannot end on their own before the chat request does
        GenRequest(
            prompt,
            ref,
            Sampling(max_tokens=2000, stop_repeats=False),
            emit(f"bg{i}"),
            far,
            "acme",
            background=True,
        )
        for i in range(4)
    ]
    parks = engine.parks
    engine.submit(background)
    wait_for(lambda: all(tokens.get(f"bg{i}") for i in range(4)), 30, "background rows to decode")
    bg_steps["start"] = sum(len(r.seq.out) for r in background)
    engine.submit([GenRequest(prompt, ref, Sampling(max_tokens=8), emit("chat"), far, "acme")])
    assert chat_done.wait(120)
    assert order[0] == "chat" and engine.parks > parks  # it did not wait for the long rows
    # it decoded alone: the background rows moved at most the steps before they were parked
    assert bg_steps["end"] - bg_steps["start"] <= 3 * len(background), bg_steps
    for r in background:
        r.cancelled.set()
    wait_for(lambda: all(r.done for r in background), 60, "background rows to end")
    assert engine.inflight == 0  # background work holds no admission slots


# ---- webhooks ------------------------------------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(500 if len(type(self).received) == 1 else 204)  # the first attempt fails
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_signed_retried_and_only_sent_to_allowed_hosts(server, tmp_path):
    hook = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    oai = client_for(server, server.acme)
    line = [
        {
            "custom_id": "e",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "all-minilm-l6-v2", "input": "hello"},
        }
    ]
    with open(batch_file(tmp_path, line), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    url = f"http://127.0.0.1:{hook.server_port}/done"
    batch = oai.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"webhook_url": url}
    )
    finished(oai, batch.id)
    wait_for(lambda: len(_Hook.received) == 2, 30, "the retried webhook")
    headers, body = _Hook.received[-1]
    secret = server.client.get("/v1/webhook_secret", headers=auth(server.acme)).json()["secret"]
    assert (
        headers["X-Convtune-Signature"]
        == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    )
    assert json.loads(body)["id"] == batch.id and json.loads(body)["status"] == "completed"
    other = server.client.get("/v1/webhook_secret", headers=auth(server.globex)).json()["secret"]
    assert other != secret  # per tenant
    state = wait_for(lambda: server.ctx.jobs_db.get_batch(batch.id)["webhook"], 10, "the delivery record")
    assert state["delivered"] and state["attempts"] == 2
    hook.shutdown()
    # a host the operator did not allow is never contacted
    with open(batch_file(tmp_path, line, "b2.jsonl"), "rb") as fh:
        f = oai.files.create(file=fh, purpose="batch")
    batch = oai.batches.create(
        input_file_id=f.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"webhook_url": "http://10.1.2.3:9/x"},
    )
    finished(oai, batch.id)
    state = wait_for(lambda: server.ctx.jobs_db.get_batch(batch.id)["webhook"], 10, "the refusal")
    assert state == {"url": "http://10.1.2.3:9/x", "delivered": False, "error": "host not allowed"}


# ---- a server killed mid-batch -----------------------------------------------------------------


def _serve(tiny_model_dir, home: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "CONVTUNE_HOME": str(home),
        "CONVTUNE_SERVE_BASE_MODEL": str(tiny_model_dir),
        "CONVTUNE_SERVE_BATCH_STALE_S": "3",
        "CONVTUNE_SERVE_BATCH_POLL_S": "0.3",
        "CONVTUNE_SERVE_BATCH_CONCURRENCY": "2",
        "CONVTUNE_SERVE_WORKER": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "convtune.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_server_killed_mid_batch_is_finished_by_the_next_one_exactly_once(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = subprocess.run(
        [sys.executable, "-m", "convtune.cli", "keys", "create", "--tenant", "acme"],
        env={**os.environ, "CONVTUNE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    oai = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    proc = _serve(tiny_model_dir, home, port)
    try:
        wait_for(lambda: _ready(port), 120, "the server")
        base = oai.models.list().data[0].id
        lines = [
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": base,
                    "messages": [{"role": "user", "content": f"Q{i}?"}],
                    "max_tokens": 24,
                },
            }
            for i in range(30)
        ]
        with open(batch_file(tmp_path, lines), "rb") as fh:
            f = oai.files.create(file=fh, purpose="batch")
        batch = oai.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(lambda: oai.batches.retrieve(batch.id).request_counts.completed >= 3, 120, "some lines")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-batch: no shutdown, no chance to hand it over
        proc.wait(30)
    proc = _serve(tiny_model_dir, home, port)
    try:
        wait_for(lambda: _ready(port), 120, "the second server")
        partial = oai.batches.retrieve(batch.id)
        assert partial.status == "in_progress" and 3 <= partial.request_counts.completed < 30
        done = finished(oai, batch.id, timeout=240)
        assert done.status == "completed" and done.request_counts.completed == 30
        out = [json.loads(x) for x in oai.files.content(done.output_file_id).text.splitlines()]
        ids = [o["custom_id"] for o in out]
        assert ids == [f"q{i}" for i in range(30)]  # every line once, in input order
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


# ---- the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_url(server):
    """The same app over real HTTP (the CLI speaks urllib, not the test client)."""
    with over_http(server.app) as url:
        yield url


def test_cli_creates_follows_lists_shows_and_fetches_results(server, http_url, tmp_path, capsys, monkeypatch):
    from convtune.cli import main

    monkeypatch.setenv("CONVTUNE_API_KEY", server.acme)
    args = ["--url", http_url]
    path = batch_file(tmp_path, analyze_lines(2))
    assert main(["batch", "create", str(path), "--endpoint", ANALYZE, "--follow", "--metadata", "team=care",
                 *args]) == 0
    out = capsys.readouterr()
    batch_id = out.out.split()[0]
    assert batch_id.startswith("batch-") and "completed: 2 completed, 0 failed" in out.err
    assert "uploaded" in out.err and "(2 requests)" in out.err
    assert main(["batch", "list", *args]) == 0 and f"{batch_id}  completed    2/2" in capsys.readouterr().out
    assert main(["batch", "show", batch_id, *args]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"] == {"team": "care"}
    assert main(["batch", "results", batch_id, "-o", str(tmp_path / "out.jsonl"), *args]) == 0
    got = [json.loads(x)["custom_id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert got == ["call-0", "call-1"]
    capsys.readouterr()
    assert main(["batch", "results", batch_id, "--errors", *args]) == 1  # no failed lines: no error file
    assert main(["batch", "cancel", batch_id, *args]) != 0 and "409" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a"}\n')
    assert main(["batch", "create", str(bad), "--endpoint", ANALYZE, *args]) == 3
    assert "bad.jsonl:1" in capsys.readouterr().err
