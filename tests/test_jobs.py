"""Fine-tuning as a service on the tiny model: files, jobs, worker, recovery, tenancy, databases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import EXAMPLES
from .serve_helpers import make_run, make_server, over_http

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "My card was charged twice for one order. Can you help?"}]
SUPERVISED = {
    "type": "supervised",
    "supervised": {"hyperparameters": {"n_epochs": 1, "max_steps": 4, "save_every": 2}},
}


def small_file(tmp: Path, n: int = 6) -> Path:
    lines = (EXAMPLES / "train.jsonl").read_text().splitlines()[:n]
    path = tmp / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


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

    from convtune.jobs.worker import Worker, WorkerSettings

    srv = make_server(tiny_model_dir, tmp_path_factory.mktemp("jobs-home"), {})
    srv.ctx.base_spec = str(tiny_model_dir)
    stop = threading.Event()
    worker = Worker(srv.ctx.jobs_db, srv.ctx.settings.home, WorkerSettings(poll_s=0.2, stale_s=60))
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    with TestClient(srv.app) as client:
        srv.client = client
        yield srv
    stop.set()
    thread.join(60)


def client_for(server, key):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=key, http_client=server.client, max_retries=0
    )


def test_upload_train_serve_with_the_openai_client(server, tmp_path):
    oai = client_for(server, server.acme)
    with open(small_file(tmp_path), "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    assert f.status == "processed" and f.id.startswith("file-") and f.filename == "calls.jsonl"
    job = oai.fine_tuning.jobs.create(
        training_file=f.id,
        model="tiny-base",
        suffix="support",
        seed=7,
        method=SUPERVISED,
        metadata={"team": "care"},
    )
    assert job.status == "queued" and job.hyperparameters.n_epochs == 1

    def finished():
        j = oai.fine_tuning.jobs.retrieve(job.id)
        return j if j.status in ("succeeded", "failed", "cancelled") else None

    done = wait_for(finished, 240, "the job to finish")
    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=100))
    assert done.status == "succeeded", [e.message for e in events]
    assert done.fine_tuned_model == f"ft:tiny-base:acme:support:{job.id}" and done.trained_tokens > 0
    metrics = [e for e in events if e.type == "metrics" and "step" in e.data]
    assert [e.data["step"] for e in reversed(metrics)] == [1, 2, 3, 4]
    assert all(e.data["train_loss"] > 0 and e.data["tokens_per_second"] > 0 for e in metrics)
    # What tuning bought, before using the model: each label field's candidates on validation.
    table = {e.data["validation"]["field"]: e.data["validation"] for e in events
             if e.type == "metrics" and "validation" in e.data}
    assert set(table) == {"intent", "sentiment.overall", "sentiment.start", "sentiment.end"}
    assert all({"head", "knn", "lm"} <= set(row["scores"]) or row["fallback"] for row in table.values())
    assert done.validation["tasks"]["intent"]["predictor"] == table["intent"]["winner"]
    ckpts = list(oai.fine_tuning.jobs.checkpoints.list(job.id))
    assert sorted(c.step_number for c in ckpts) == [2, 4]
    for model in (done.fine_tuned_model, ckpts[0].fine_tuned_model_checkpoint):  # servable at once
        out = oai.chat.completions.create(model=model, messages=HELLO, max_tokens=6)
        assert out.choices[0].message.content
    r = server.client.post(
        "/v1/conversations/analyze",
        headers=_auth(server.acme),
        json={
            "model": done.fine_tuned_model,
            "tasks": ["intent"],
            "conversation": {"messages": [{"speaker": "Customer", "text": "I want to cancel my plan."}]},
        },
    )
    assert r.status_code == 200 and r.json()["tasks"]["intent"]["valid"]
    assert r.json()["tasks"]["intent"]["predictor"] == table["intent"]["winner"]
    assert 0 < r.json()["tasks"]["intent"]["confidence"] <= 1
    assert done.fine_tuned_model in [m.id for m in oai.models.list()]
    content = server.client.get(f"/v1/files/{f.id}/content", headers=_auth(server.acme))
    assert content.status_code == 200 and len(content.text.splitlines()) == 6


def test_cancel_stops_a_running_job_and_list_paginates(server, tmp_path):
    oai = client_for(server, server.acme)
    with open(small_file(tmp_path, 4), "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    long = {"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 120, "save_every": 5}}}
    running = oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", method=long)
    queued = oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", method=long)
    wait_for(
        lambda: any(e.type == "metrics" for e in oai.fine_tuning.jobs.list_events(running.id)),
        180,
        "training steps",
    )
    assert oai.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=4).choices  # serving
    assert oai.fine_tuning.jobs.retrieve(queued.id).status == "queued"  # one running job per tenant
    assert oai.fine_tuning.jobs.cancel(queued.id).status == "cancelled"  # never started
    oai.fine_tuning.jobs.cancel(running.id)
    done = wait_for(
        lambda: (j := oai.fine_tuning.jobs.retrieve(running.id)).status != "running" and j, 120, "the cancel"
    )
    assert done.status == "cancelled" and done.finished_at and done.fine_tuned_model is None
    steps = [
        e.data["step"]
        for e in oai.fine_tuning.jobs.list_events(running.id, limit=1000)
        if e.type == "metrics"
    ]
    assert 0 < max(steps) < 120
    page = oai.fine_tuning.jobs.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    ids = [j.id for j in oai.fine_tuning.jobs.list(limit=1)]  # auto-paging with after=
    assert ids[:2] == [queued.id, running.id] and len(ids) == len(set(ids)) >= 3


def test_malformed_upload_lists_every_problem_and_starts_no_job(server, tmp_path):
    oai = client_for(server, server.acme)
    good = json.loads((EXAMPLES / "train.jsonl").read_text().splitlines()[0])
    bad_role = {**good, "id": "x2", "turns": [{**good["turns"][0], "role": "robot"}]}
    lines = [json.dumps(good), "{not json", json.dumps(bad_role), json.dumps({"id": "x4", "turns": []})]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with open(path, "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    assert f.status == "error"
    details = f.status_details
    for line in (":2", ":3", ":4"):
        assert f"broken.jsonl{line}" in details, details
    problems = f.to_dict()["problems"]  # convtune: the same problems, machine-readable (playground table)
    assert sorted({p["line"] for p in problems}) == [2, 3, 4] and all(p["message"] for p in problems)
    before = len(oai.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as err:
        oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base")
    assert err.value.body["param"] == "training_file"
    assert len(oai.fine_tuning.jobs.list(limit=100).data) == before
    with pytest.raises(openai.BadRequestError) as err:
        oai.fine_tuning.jobs.create(training_file=f.id, model="gpt-4o")
    assert err.value.body["param"] == "model"


def test_chat_format_upload_trains_the_assistant_turns(server, tmp_path):
    oai = client_for(server, server.acme)
    chats = [
        {
            "messages": [
                {"role": "system", "content": "You are Kestrel Mobile support."},
                {"role": "user", "content": f"My bill went up by {n} dollars, why?"},
                {"role": "assistant", "content": "Let me check the charges on your account."},
                {"role": "user", "content": "Thanks."},
                {"role": "assistant", "content": "A roaming pass was added; I have refunded it."},
            ]
        }
        for n in (5, 10, 20)
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    with open(path, "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    assert f.status == "processed" and f.model_extra["kind"] == "chat"
    job = oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", suffix="chat", method=SUPERVISED)
    done = wait_for(
        lambda: (j := oai.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        240,
        "the chat job",
    )
    assert done.status == "succeeded", done.error
    out = oai.chat.completions.create(model=done.fine_tuned_model, messages=HELLO, max_tokens=4)
    assert out.choices[0].message.content


def test_tenant_intents_train_through_a_job_with_label_sets_from_the_file(server, tmp_path):
    """A file labelled with the tenant's own intents trains: the label set comes from the file
    (recorded on the job) and reaches the run; bad label sets are refused at creation."""
    from convtune.jobs.service import run_dir

    oai = client_for(server, server.acme)
    own = ("pin_reset_request", "card_lost", "balance_query")

    def upload(labels, name):
        rows = [json.loads(line) for line in (EXAMPLES / "train.jsonl").read_text().splitlines()[:6]]
        for i, row in enumerate(rows):
            row["labels"] = {"intent": labels[i % len(labels)]}
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with open(path, "rb") as fh:
            f = oai.files.create(file=fh, purpose="fine-tune")
        assert f.status == "processed", f.status_details
        return f

    def method(**hp):
        return {"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 2, **hp}}}

    f = upload(own, "own.jsonl")
    with pytest.raises(openai.BadRequestError) as err:  # an explicit set missing one of the file's labels
        oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base",
                                    method=method(labels={"intent": ["pin_reset_request", "card_lost"]}))
    assert err.value.body["param"] == "hyperparameters.labels"
    assert "balance_query" in err.value.body["message"]
    single = upload(("pin_reset_request",), "single.jsonl")
    with pytest.raises(openai.BadRequestError) as err:
        oai.fine_tuning.jobs.create(training_file=single.id, model="tiny-base", method=method())
    assert err.value.body["param"] == "training_file"
    assert "needs at least 2 labels; found only 'pin_reset_request'" in err.value.body["message"]

    job = oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", suffix="own", method=method())
    assert job.hyperparameters.model_extra["labels"] == {"intent": sorted(own)}  # recorded on the job
    done = wait_for(
        lambda: (j := oai.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        240,
        "the job on the tenant's intents",
    )
    events = [e.message for e in oai.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert done.status == "succeeded", (done.error, events)
    assert any(m.startswith("Label set: intent:") for m in events)
    run = run_dir(server.ctx.settings.home, {"tenant": "acme", "id": job.id}) / "run"
    info = json.loads((run / "tasks.json").read_text())
    assert info["labels"] == {"intent": sorted(own)} and info["tasks"][0]["labels"] == sorted(own)


def test_pause_resume_and_preference_files(server, tmp_path):
    oai = client_for(server, server.acme)
    good = {
        "input": {"messages": [{"role": "user", "content": "Summarize: card 4111 1111 1111 1111 declined."}]},
        "preferred_output": [{"role": "assistant", "content": "The customer's card was declined."}],
        "non_preferred_output": [{"role": "assistant", "content": "Card declined."}],
    }
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(good) + "\n")
    with open(path, "rb") as fh:
        pref = oai.files.create(file=fh, purpose="fine-tune")
    assert pref.status == "processed" and pref.model_extra["kind"] == "preference"
    assert "4111" not in server.client.get(f"/v1/files/{pref.id}/content", headers=_auth(server.acme)).text
    bad = [
        {**good, "preferred_output": [{"role": "user", "content": "x"}]},
        {**good, "non_preferred_output": good["preferred_output"]},
        {"input": {}},
    ]
    path.write_text("".join(json.dumps(b) + "\n" for b in bad))
    with open(path, "rb") as fh:
        broken = oai.files.create(file=fh, purpose="fine-tune")
    assert broken.status == "error"
    for where in (
        "prefs.jsonl:1 [preferred_output.0.role]",
        "prefs.jsonl:2 [non_preferred_output]",
        "prefs.jsonl:3 [input.messages]",
        "prefs.jsonl:3 [preferred_output]",
    ):
        assert where in broken.status_details, broken.status_details
    with pytest.raises(openai.BadRequestError) as err:  # DPO starts from a tuned model, not the base
        oai.fine_tuning.jobs.create(training_file=pref.id, model="tiny-base", method={"type": "dpo"})
    assert err.value.body["param"] == "model"
    with open(small_file(tmp_path, 2), "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    with _held_worker(server):  # the worker must not take the job while it is paused and resumed
        job = oai.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", method=SUPERVISED)
        assert (
            server.client.post(f"/v1/fine_tuning/jobs/{job.id}/pause", headers=_auth(server.acme)).json()[
                "status"
            ]
            == "paused"
        )
        r = server.client.post(f"/v1/fine_tuning/jobs/{job.id}/pause", headers=_auth(server.acme))
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
        r = server.client.post(f"/v1/fine_tuning/jobs/{job.id}/resume", headers=_auth(server.acme))
        assert r.json()["status"] == "queued"
        assert oai.fine_tuning.jobs.cancel(job.id).status == "cancelled"


class _held_worker:
    """Stop the module's worker from claiming jobs inside the block."""

    def __init__(self, server):
        self.db = server.ctx.jobs_db
        self.claim = self.db.claim

    def __enter__(self):
        self.db.claim = lambda *a, **k: None
        return self

    def __exit__(self, *exc):
        self.db.claim = self.claim


def test_dpo_job_aligns_a_tuned_model(server, tiny_model_dir, tmp_path):

    server.ctx.models.add("acme", "sft-a", make_run(tiny_model_dir, tmp_path / "sft", seed=5), replace=True)
    oai = client_for(server, server.acme)
    pairs = [
        {
            "input": {"messages": [{"role": "user", "content": f"Summarize call {i}: refund issued."}]},
            "preferred_output": [{"role": "assistant", "content": "The agent issued a refund."}],
            "non_preferred_output": [{"role": "assistant", "content": "ok"}],
        }
        for i in range(4)
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with open(path, "rb") as fh:
        f = oai.files.create(file=fh, purpose="fine-tune")
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "max_steps": 2}}}
    job = oai.fine_tuning.jobs.create(training_file=f.id, model="sft-a", suffix="dpo", method=dpo)
    assert job.method.type == "dpo" and job.hyperparameters.beta == 0.2
    done = wait_for(
        lambda: (j := oai.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        240,
        "the DPO job",
    )
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-base:acme:dpo:{job.id}"
    assert any(e.type == "metrics" for e in oai.fine_tuning.jobs.list_events(job.id, limit=100))
    assert oai.chat.completions.create(model=done.fine_tuned_model, messages=HELLO, max_tokens=4).choices
    with pytest.raises(openai.BadRequestError) as err:  # a conversations file is not preference data
        with open(small_file(tmp_path, 2), "rb") as fh:
            other = oai.files.create(file=fh, purpose="fine-tune")
        oai.fine_tuning.jobs.create(training_file=other.id, model="sft-a", method=dpo)
    assert err.value.body["param"] == "training_file"


def test_another_tenants_files_jobs_and_models_are_404(server, tiny_model_dir, tmp_path):
    acme, globex = client_for(server, server.acme), client_for(server, server.globex)
    with open(small_file(tmp_path, 2), "rb") as fh:
        f = acme.files.create(file=fh, purpose="fine-tune")
    job = acme.fine_tuning.jobs.create(training_file=f.id, model="tiny-base", method=SUPERVISED)
    acme.fine_tuning.jobs.cancel(job.id)
    for call in (
        lambda: globex.files.retrieve(f.id),
        lambda: globex.files.delete(f.id),
        lambda: globex.fine_tuning.jobs.retrieve(job.id),
        lambda: globex.fine_tuning.jobs.cancel(job.id),
        lambda: globex.fine_tuning.jobs.list_events(job.id),
        lambda: globex.fine_tuning.jobs.create(training_file=f.id, model="tiny-base"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [x.id for x in globex.files.list()] == [] and globex.fine_tuning.jobs.list().data == []
    ft = f"ft:tiny-base:acme::{job.id}"  # registered as a finished job registers its model
    server.ctx.models.add("acme", ft, make_run(tiny_model_dir, tmp_path / "run", seed=6), replace=True)
    assert acme.chat.completions.create(model=ft, messages=HELLO, max_tokens=2).choices
    with pytest.raises(openai.NotFoundError):
        globex.chat.completions.create(model=ft, messages=HELLO, max_tokens=4)
    assert acme.files.delete(f.id).deleted and f.id not in [x.id for x in acme.files.list()]


def test_upload_over_the_size_limit_is_413(server, monkeypatch):
    ctx = server.ctx
    monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(update={"files_max_bytes": 2048}))
    r = server.client.post(
        "/v1/files",
        headers=_auth(server.acme),
        data={"purpose": "fine-tune"},
        files={"file": ("big.jsonl", b"x" * 200_000)},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"


def _auth(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def http_url(server):
    """The same app over real HTTP (the CLI speaks urllib, not the test client)."""
    with over_http(server.app) as url:
        yield url


def test_cli_mirror_creates_follows_lists_and_shows_events(server, http_url, tmp_path, capsys, monkeypatch):
    from convtune.cli import main

    monkeypatch.setenv("CONVTUNE_API_KEY", server.acme)
    args = ["--url", http_url]
    path = small_file(tmp_path, 3)
    assert (
        main(["jobs", "create", str(path), "--suffix", "cli", "--max-steps", "2", "--save-every", "2", *args])
        == 0
    )
    out = capsys.readouterr()
    job_id = out.out.split()[0]
    assert job_id.startswith("ftjob-") and f"succeeded: ft:tiny-base:acme:cli:{job_id}" in out.err
    assert "uploaded" in out.err and "3 conversations records" in out.err
    assert main(["jobs", "list", *args]) == 0 and job_id in capsys.readouterr().out
    assert main(["jobs", "events", job_id, *args]) == 0
    assert "successfully completed" in capsys.readouterr().out
    assert main(["jobs", "show", job_id, *args]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    monkeypatch.setenv("CONVTUNE_API_KEY", server.globex)
    assert main(["jobs", "cancel", job_id, *args]) != 0  # another tenant's job: 404, said on stderr
    assert "404" in capsys.readouterr().err


# ---- the worker process: kill -9 and resume -----------------------------------------------------


def test_killed_worker_job_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    from convtune.jobs.db import JobsDB
    from convtune.jobs.files import store_upload
    from convtune.jobs.service import Hyperparameters, JobRequest, Method, _Supervised, create_job

    home = tmp_path / "home"
    url = f"sqlite:///{home / 'jobs.sqlite'}"
    db = JobsDB(url)
    with open(small_file(tmp_path, 4), "rb") as fh:
        f = store_upload(db, home, "acme", "calls.jsonl", "fine-tune", fh, max_bytes=10**7)
    hp = Hyperparameters(max_steps=10, save_every=2)
    job = create_job(
        db,
        "acme",
        JobRequest(
            model="tiny-base",
            training_file=f["id"],
            method=Method(supervised=_Supervised(hyperparameters=hp)),
        ),
        base_name="tiny-base",
        base_spec=str(tiny_model_dir),
    )
    env = {**os.environ, "CONVTUNE_HOME": str(home), "CONVTUNE_JOB_HEARTBEAT_S": "0.5"}
    cmd = [
        sys.executable,
        "-m",
        "convtune.cli",
        "worker",
        "--database-url",
        url,
        "--poll-s",
        "0.3",
        "--stale-s",
        "4",
    ]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: db.list_checkpoints(job["id"])[0], 180, "a first checkpoint")
        pid = db.get_job(job["id"])["pid"]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_for(lambda: not _alive(pid), 10, "the job process to die with its worker")
        assert db.get_job(job["id"])["status"] == "running"  # nobody has noticed yet
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            done = wait_for(
                lambda: (j := db.get_job(job["id"]))["status"] in ("succeeded", "failed") and j,
                240,
                "the resumed job to finish",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
    messages = [e["message"] for e in db.list_events(job["id"], limit=1000)[0]]
    assert done["status"] == "succeeded", messages
    assert done["attempts"] == 1 and any(
        "Resuming from the newest complete checkpoint" in m for m in messages
    )
    run = home / "tenants" / "acme" / "jobs" / job["id"] / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["resumed_from"] >= 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped) counts as dead
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# ---- the metadata database: SQLite and PostgreSQL, same code -----------------------------------------


def _postgres():
    """A throwaway PostgreSQL server (initdb + pg_ctl on a Unix socket), or None where not installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    pytest.importorskip("psycopg")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="convtune-pg-"))  # pytest's tmp dirs are private to root
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        if not shutil.which("runuser"):
            return None
        as_user = ["runuser", "-u", "postgres", "--"]
        for p in (root, sock):
            os.chmod(p, 0o777)
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "convtune"], check=True, capture_output=True
    )
    # -l: the server's output goes to a file (it would keep a captured pipe open forever)
    subprocess.run(
        [
            *as_user,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            f"-k {sock} -c listen_addresses=''",
            "-w",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql+psycopg://convtune@/postgres?host={sock}", stop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.sqlite'}"
        return
    started = _postgres()
    if started is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed here")
    url, stop = started
    try:
        yield url
    finally:
        stop()


def test_queue_claims_each_job_once_and_pages_on_both_databases(database_url, tmp_path):
    from convtune.jobs.db import JobsDB, new_id

    db = JobsDB(database_url)
    base = {
        "model": "m",
        "training_file": "file-x",
        "seed": 1,
        "method": {},
        "hyperparameters": {},
        "status": "queued",
        "attempts": 0,
    }
    ids = []
    for i in range(6):
        ids.append(new_id("ftjob"))
        db.add_job(
            {
                **base,
                "id": ids[-1],
                "tenant": "acme" if i < 4 else "globex",
                "created_at": 1000 + i,
                "created_ts": 1000.0 + i,
            }
        )
    claimed: list[str] = []
    lock = threading.Lock()

    def grab():
        other = JobsDB(database_url)  # its own connections, as another worker would have
        while (job := other.claim("w", per_tenant=10)) is not None:
            with lock:
                claimed.append(job["id"])

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)  # every job exactly once
    page, more = db.list_jobs("acme", limit=3)
    rest, more2 = db.list_jobs("acme", after=page[-1]["id"], limit=3)
    assert [j["id"] for j in page + rest] == ids[:4][::-1] and more and not more2
    for n in range(5):
        db.add_event(ids[0], f"e{n}", data={"step": n})
    first, has_more = db.list_events(ids[0], limit=3)
    second, _ = db.list_events(ids[0], after=first[-1]["id"], limit=3)
    assert [e["message"] for e in first + second] == ["e4", "e3", "e2", "e1", "e0"] and has_more
    assert db.update_job(ids[0], where_status=["queued"], status="x") is False  # it is running
    for n in range(2):  # a tenant at its limit gets nothing more, whatever is queued
        db.add_job(
            {**base, "id": f"ftjob-limit{n}", "tenant": "t2", "created_at": 2000, "created_ts": 2000.0 + n}
        )
    assert db.claim("w", per_tenant=1)["id"] == "ftjob-limit0" and db.claim("w", per_tenant=1) is None
    assert db.stale_running(older_than_s=-1)  # heartbeat in the past relative to "now + 1 s"


def test_a_running_job_reports_trained_tokens_and_estimated_finish_as_it_goes(tmp_path):
    from types import SimpleNamespace

    from convtune.jobs.db import JobsDB
    from convtune.jobs.runner import _publisher
    from convtune.jobs.service import job_object
    from convtune.training.callbacks import RunCounters

    db = JobsDB(f"sqlite:///{tmp_path / 'jobs.db'}")
    now = int(time.time())
    db.add_job({"id": "ftjob-live", "tenant": "acme", "model": "tiny-base", "training_file": "file-x",
                "suffix": None, "seed": 1, "user_metadata": None, "method": {"type": "supervised"},
                "hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
                "status": "running", "created_at": now, "created_ts": time.time()})
    job = db.get_job("ftjob-live")
    assert job_object(job)["trained_tokens"] is None and job_object(job)["estimated_finish"] is None
    publisher = _publisher(db, job, tmp_path)
    counters = RunCounters(tokens=1200, session_step_seconds=2.0, session_tokens=1200,
                           session_started=time.time() - 10)  # 2 steps in 10 s: 5 s a step
    publisher.bind_counters(counters)
    publisher.on_log(None, SimpleNamespace(global_step=2, max_steps=10), None, logs={"loss": 1.5})
    live = job_object(db.get_job("ftjob-live"))
    assert live["trained_tokens"] == 1200
    assert abs(live["estimated_finish"] - (time.time() + 8 * 5)) < 5  # 8 steps left at 5 s each
    db.update_job("ftjob-live", status="succeeded")
    assert job_object(db.get_job("ftjob-live"))["estimated_finish"] is None  # only while running
