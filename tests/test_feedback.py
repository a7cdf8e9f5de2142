"""Feedback on served generations: capture, tenancy, restart survival, export to DPO/KTO data."""

from __future__ import annotations

import json

import pytest

from .serve_helpers import make_server

openai = pytest.importorskip("openai")

ASK = [{"role": "user", "content": "My card 4111 1111 1111 1111 was charged twice. What now?"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("feedback-home")


@pytest.fixture(scope="module")
def server(tiny_model_dir, home):
    from fastapi.testclient import TestClient

    srv = make_server(tiny_model_dir, home, {})
    with TestClient(srv.app) as client:
        srv.client = client
        yield srv


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


def _post(server, key, body):
    return server.client.post("/v1/feedback", headers=_auth(key), json=body)


def test_feedback_on_every_kind_of_response_and_export(server, home, tmp_path):
    oai = openai.OpenAI(
        base_url="http://testserver/v1", api_key=server.acme, http_client=server.client, max_retries=0
    )
    a = oai.chat.completions.create(
        model="tiny-base", messages=ASK, max_tokens=6, n=2, temperature=1.0, seed=1
    )
    b = oai.chat.completions.create(model="tiny-base", messages=ASK, max_tokens=6, temperature=1.0, seed=9)
    streamed = oai.chat.completions.create(model="tiny-base", messages=ASK, max_tokens=6, stream=True)
    sid = [c.id for c in streamed][0]
    conv = {
        "messages": [
            {"speaker": "Customer", "text": "Cancel my plan please."},
            {"speaker": "Agent", "text": "Done, it ends today."},
        ]
    }
    r = server.client.post(
        "/v1/conversations/analyze",
        headers=_auth(server.acme),
        json={"conversation": conv, "tasks": ["summary", "intent"]},
    )
    analysis = r.json()["id"]
    ok = [
        {"response_id": a.id, "type": "thumbs", "value": True},
        {"response_id": a.id, "choice": 1, "type": "thumbs", "value": False},
        {"response_id": b.id, "type": "rating", "value": 2},
        {"response_id": sid, "type": "correction", "value": "Your card ending <CREDIT_CARD> was refunded."},
        {"response_id": b.id, "type": "preference", "other_response_id": a.id, "other_choice": 1},
        {
            "response_id": analysis,
            "choice": "summary",
            "type": "correction",
            "value": "The customer cancelled the plan; it ends today.",
        },
    ]
    for body in ok:
        res = _post(server, server.acme, body)
        assert res.status_code == 201, res.text
        assert res.json()["object"] == "feedback"
    bad = [
        ({"response_id": "chatcmpl-nope", "type": "thumbs", "value": True}, 404, "response_id"),
        ({"response_id": a.id, "type": "rating", "value": 9}, 400, "value"),
        ({"response_id": a.id, "choice": 5, "type": "thumbs", "value": True}, 400, "choice"),
        ({"response_id": a.id, "type": "preference"}, 400, "other_response_id"),
        ({"response_id": a.id, "type": "preference", "other_response_id": "x"}, 404, "other_response_id"),
    ]
    for body, status, param in bad:
        res = _post(server, server.acme, body)
        assert res.status_code == status, (body, res.text)
        if param:
            assert res.json()["error"]["param"] == param
    # another tenant's response id is not found
    assert (
        _post(server, server.globex, {"response_id": a.id, "type": "thumbs", "value": True}).status_code
        == 404
    )

    from convtune.cli import main

    out = tmp_path / "export"
    assert (
        main(
            [
                "feedback",
                "export",
                "--tenant",
                "acme",
                "--out",
                str(out),
                "--database-url",
                server.ctx.settings.jobs_url,
            ]
        )
        == 0
    )
    pairs = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    kto = [json.loads(x) for x in (out / "kto.jsonl").read_text().splitlines()]
    texts = {c.index: c.message.content for c in a.choices}
    want = {  # (preferred, non-preferred)
        (texts[0], texts[1]),  # up > down, same prompt
        (texts[0], b.choices[0].message.content),  # up (5) > rating 2, same prompt
        (b.choices[0].message.content, texts[1]),  # explicit preference
    }
    got = {(p["preferred_output"][0]["content"], p["non_preferred_output"][0]["content"]) for p in pairs}
    assert want <= got
    corrections = [p for p in pairs if "refunded" in p["preferred_output"][0]["content"]]
    assert len(corrections) == 1 and "4111" not in json.dumps(pairs)  # prompts are stored redacted
    summary = [p for p in pairs if "cancelled the plan" in p["preferred_output"][0]["content"]]
    assert summary and "Summarize" in summary[0]["input"]["messages"][-1]["content"]  # the task's instruction
    assert {(k["completion"][0]["content"], k["label"]) for k in kto} >= {(texts[0], True), (texts[1], False)}


def test_feedback_survives_a_restart(server, tiny_model_dir, home):
    from fastapi.testclient import TestClient

    from convtune.jobs.db import JobsDB
    from rlhf.feedback import export

    before = export(JobsDB(server.ctx.settings.jobs_url), "acme")
    again = make_server(tiny_model_dir, home, {})  # a new server process on the same home
    with TestClient(again.app) as client:
        ids = [x["id"] for x in client.get("/v1/models", headers=_auth(again.acme)).json()["data"]]
        assert ids
    assert export(again.ctx.jobs_db, "acme") == before and before[0]


def test_best_of_n_returns_the_answer_the_reward_model_prefers(server, tiny_model_dir, tmp_path):
    from rlhf.reward import RewardModelConfig, train_reward_model

    from .serve_helpers import make_run

    sft = make_run(tiny_model_dir, tmp_path / "sft", seed=4)
    rows = [
        {
            "input": {"messages": ASK},
            "preferred_output": [{"role": "assistant", "content": f"Refund {i}."}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_reward_model(RewardModelConfig(run=sft, data=data, out=tmp_path / "rm", max_steps=1))
    server.ctx.models.add("acme", "rm", tmp_path / "rm", replace=True)
    h = _auth(server.acme)
    body = {
        "model": "tiny-base",
        "messages": ASK,
        "max_tokens": 6,
        "seed": 3,
        "best_of": {"n": 3, "reward_model": "rm"},
    }
    r = server.client.post("/v1/chat/completions", headers=h, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    rewards = out["best_of"]["rewards"]
    assert len(rewards) == 3 and out["best_of"]["chosen"] == rewards.index(max(rewards))
    assert len(out["choices"]) == 1 and out["usage"]["completion_tokens"] > 6  # three answers were generated
    from rlhf.reward import RewardScorer

    head, answer, _ = server.ctx.host.renderer.preference_texts(
        ASK, out["choices"][0]["message"]["content"], ""
    )
    tok = server.ctx.host.tokenizer
    ids = (
        tok(head, add_special_tokens=False)["input_ids"] + tok(answer, add_special_tokens=False)["input_ids"]
    )
    assert RewardScorer(tmp_path / "rm").score([ids])[0] == pytest.approx(max(rewards), abs=1e-3)
    for change, status, param in (
        ({"best_of": {"n": 3, "reward_model": "nope"}}, 404, "best_of.reward_model"),
        ({"n": 2}, 400, "best_of"),
        ({"stream": True}, 400, "best_of"),  # never silently streamed without best-of
        ({"model": "rm", "best_of": None}, 400, "model"),
    ):
        r = server.client.post("/v1/chat/completions", headers=h, json={**body, **change})
        assert r.status_code == status and r.json()["error"]["param"] == param, r.text

    # best-of-n as a model's default (convtune models add --best-of 3 --reward-model rm)
    from convtune.errors import ConfigError

    with pytest.raises(ConfigError, match="no model 'nope'"):
        server.ctx.models.add("acme", "sft-bo", sft, best_of={"n": 3, "reward_model": "nope"})
    with pytest.raises(ConfigError, match="n \\(2-16\\)"):
        server.ctx.models.add("acme", "sft-bo", sft, best_of={"n": 1, "reward_model": "rm"})
    server.ctx.models.add("acme", "sft-bo", sft, best_of={"n": 3, "reward_model": "rm"}, replace=True)
    plain = {"model": "sft-bo", "messages": ASK, "max_tokens": 6, "seed": 3}
    r = server.client.post("/v1/chat/completions", headers=h, json=plain)
    assert r.status_code == 200, r.text
    assert len(r.json()["best_of"]["rewards"]) == 3 and len(r.json()["choices"]) == 1
    r = server.client.post("/v1/chat/completions", headers=h, json={**plain, "n": 2})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2 and "best_of" not in r.json()
    r = server.client.post("/v1/chat/completions", headers=h, json={**plain, "stream": True})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


def test_cli_registers_a_best_of_default_only_with_a_reward_model(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from convtune.cli import main
    from convtune.tenancy import ModelStore

    from .serve_helpers import make_run

    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "home"))
    sft = make_run(tiny_model_dir, tmp_path / "sft", seed=5)
    assert main(["models", "add", str(sft), "--tenant", "acme", "--name", "plain"]) == 0
    args = ["models", "add", str(sft), "--tenant", "acme", "--name", "bo", "--best-of", "4"]
    for extra in ([], ["--reward-model", "plain"]):  # no reward model; a generation model instead
        assert main(args + extra) != 0
        assert "reward" in capsys.readouterr().err
    (sft / "metrics.json").write_text(json.dumps({"kind": "reward_model"}))  # looks like a reward model
    assert main(["models", "add", str(sft), "--tenant", "acme", "--name", "rm"]) == 0
    assert main(args + ["--reward-model", "rm"]) == 0
    assert ModelStore(tmp_path / "home").get("acme", "bo").best_of == {"n": 4, "reward_model": "rm"}
    assert "best-of-4 by rm" in capsys.readouterr().out


def test_feedback_is_listed_newest_first_paged_and_per_tenant(server):
    oai = openai.OpenAI(
        base_url="http://testserver/v1", api_key=server.acme, http_client=server.client, max_retries=0
    )
    out = oai.chat.completions.create(model="tiny-base", messages=ASK, max_tokens=4)
    ids = [_post(server, server.acme, {"response_id": out.id, "type": "rating", "value": v}).json()["id"]
           for v in (2, 5)]
    page = server.client.get("/v1/feedback?limit=1", headers=_auth(server.acme)).json()
    assert [f["id"] for f in page["data"]] == [ids[1]] and page["has_more"]
    assert page["data"][0]["answer"] == out.choices[0].message.content and page["data"][0]["value"] == 5
    rest = server.client.get(f"/v1/feedback?after={ids[1]}", headers=_auth(server.acme)).json()["data"]
    assert rest[0]["id"] == ids[0]
    assert all(f["id"] not in ids for f in
               server.client.get("/v1/feedback", headers=_auth(server.globex)).json()["data"])
    assert server.client.get("/v1/feedback?after=fb-nope", headers=_auth(server.acme)).status_code == 404
    export = server.client.get("/v1/feedback/export", headers=_auth(server.acme)).json()
    assert export["object"] == "feedback.export" and {"preferences", "kto"} <= set(export)
