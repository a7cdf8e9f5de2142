"""Per-task predictors: heads learn, selection picks the known winner, runs answer with it."""

from __future__ import annotations

import json
import numpy as np

from convtune.conversation import Conversation
from convtune.evaluation.generate import Answer
from convtune.predictors import heads as H
from convtune.predictors import load_predictors
from convtune.predictors.fit import fit_predictors
from convtune.training.config import PredictorsSection
from convtune.training.dataset import split_validation
from tasks.classification import ClassificationTask
from tasks.sentiment import SentimentTask

WORDS = {"refund": ["refund", "money back", "return it"], "login": ["password", "log in", "locked out"],
         "upgrade": ["upgrade", "bigger plan", "more data"]}


def conv(i: int, need: str, *, agent_says: str = "How can I help?") -> Conversation:
    phrase = WORDS[need][i % 3]
    return Conversation.model_validate({
        "id": f"c{i}", "labels": {"need": need},
        "turns": [{"id": "t1", "speaker": "Agent", "role": "agent", "text": agent_says},
                  {"id": "t2", "speaker": "Customer", "role": "customer",
                   "text": f"Hi, it's about {phrase}, case {i}."}]})


def need_task() -> ClassificationTask:
    return ClassificationTask("need", "What does the customer need?", list(WORDS), reads="customer")


def toy(n_per: int, start: int = 0) -> list[Conversation]:
    return [conv(start + 10 * j + k, need) for k, need in enumerate(WORDS) for j in range(n_per)]


def test_linear_head_learns_a_separable_label_set_and_never_predicts_an_unseen_label():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16, dtype=np.float32) * 3
    x = np.concatenate([c + 0.3 * rng.standard_normal((20, 16)) for c in centers[:3]]).astype(np.float32)
    y = [i for i in range(3) for _ in range(20)]
    head = H.fit_head(x, y, 4)
    p = head.proba(x)
    assert (p.argmax(1) == np.array(y)).mean() == 1.0
    assert p[:, 3].max() < 1e-6  # label 3 was never seen
    knn = H.KNN(x, np.array(y), 4, k=3)
    assert (knn.proba(x).argmax(1) == np.array(y)).mean() == 1.0


def test_stratified_split_keeps_every_label_in_training():
    convs = toy(5) + [conv(99, "refund")]
    strata = [c.labels["need"] for c in convs]
    train, val = split_validation(convs, None, seed=1, strata=strata)
    assert len(val) == round(0.2 * len(convs))
    assert {c.labels["need"] for c in train} == set(WORDS)
    counts = {lab: sum(c.labels["need"] == lab for c in val) for lab in WORDS}
    assert max(counts.values()) - min(counts.values()) <= 1
    again = split_validation(convs, None, seed=1, strata=strata)
    assert [c.id for c in again[1]] == [c.id for c in val]  # seeded


def _settings(**kw) -> PredictorsSection:
    return PredictorsSection(**{"encoder_epochs": 1, "min_validation": 6, **kw})


def _perfect_lm(convs, tasks):
    """A fake language model that knows every gold label (constrained label scores)."""
    out = {}
    for c in convs:
        for t in tasks:
            gold = t.gold(c)
            scores = {lab: (0.0 if lab == gold else -9.0) for lab in t.labels}
            out[(c.id, t.name)] = Answer(c.id, t.name, gold, [], True, True, 10, 10, 0.0, label_scores=scores)
    return out


def test_head_is_chosen_on_validation_and_answers_new_conversations(tmp_path):
    task = need_task()
    sel = fit_predictors(tmp_path, [task], toy(6), toy(3, start=500), settings=_settings(), lm_name="lm",
                         lm_answers=None, seed=0)
    rec = sel["fields"]["need"]
    assert rec["winner"] in ("head", "knn") and rec["validation"]["head"] == 1.0, rec
    assert rec["reads"] == "every customer turn" and rec["n_validation"] == 9 and rec["fallback"] is None
    assert sel["encoder"]["tuned"] and (tmp_path / "predictors" / "encoder" / "model.safetensors").is_file()
    saved = [p.suffix for p in (tmp_path / "predictors").rglob("*")]
    assert ".bin" not in saved and ".pkl" not in saved and ".pt" not in saved
    preds = load_predictors(tmp_path)
    assert not preds.needs_lm(task)
    new = [conv(900, "login"), conv(901, "upgrade"), conv(902, "refund")]
    got = preds.predict(task, new, [None] * 3)
    assert [g[0] for g in got] == ["login", "upgrade", "refund"]
    assert all(0.0 < g[1] <= 1.0 for g in got)
    assert 0.1 <= rec["head_knn"]["weight"] <= 0.9 and "head_knn" in rec["validation"]
    preds.fields["need"]["winner"] = "head_knn"  # the head and k-NN vote serve without the LM too
    assert not preds.needs_lm(task)
    assert [g[0] for g in preds.predict(task, new, [None] * 3)] == ["login", "upgrade", "refund"]


def test_selection_picks_the_lm_when_only_it_can_know_and_records_the_table(tmp_path):
    # The label is said by the agent; the head reads the customer's turns, which carry no signal.
    def noisy(i, need):
        c = conv(i, "refund", agent_says=f"Noted: {need}.")
        return c.model_copy(update={"labels": {"need": need}})

    labels = list(WORDS)
    train = [noisy(i, labels[i % 3]) for i in range(18)]
    val = [noisy(100 + i, labels[(i * 7) % 3]) for i in range(9)]
    sel = fit_predictors(tmp_path, [need_task()], train, val, settings=_settings(tune_encoder=False),
                         lm_name="lm", lm_answers=_perfect_lm, seed=0)
    rec = sel["fields"]["need"]
    assert rec["validation"]["lm"] == 1.0 and rec["validation"]["head"] < 0.7
    assert rec["winner"] == "lm"  # ties with the ensemble go to the simpler predictor
    saved = json.loads((tmp_path / "predictors" / "selection.json").read_text())
    assert saved["tasks"]["need"]["predictor"] == "lm" and set(saved["fields"]["need"]["validation"]) == \
        {"lm", "head", "knn", "head_knn", "ensemble"}


def test_a_validation_split_too_small_to_choose_falls_back_to_the_default_and_says_so(tmp_path):
    sel = fit_predictors(tmp_path, [need_task()], toy(4), toy(1, start=500)[:2],
                         settings=_settings(tune_encoder=False), lm_name="lm", lm_answers=None, seed=0)
    rec = sel["fields"]["need"]
    assert rec["winner"] == "head"
    assert "validation has 2 labelled example(s)" in rec["fallback"]
    assert "default predictor 'head'" in rec["fallback"]
    assert any("default predictor" in n for n in sel["notes"])


def test_sentiment_fields_read_their_own_turns_and_assemble_a_label():
    task = SentimentTask()
    keys = [f.key for f in task.label_fields()]
    assert keys == ["sentiment.overall", "sentiment.start", "sentiment.end"]
    label = {"overall": "negative", "start": "negative", "end": "positive"}
    assert task.from_fields(task.field_values(label)) == label
    from tasks.views import view_text

    c = Conversation.model_validate({"id": "s", "turns": [
        {"id": f"t{i}", "speaker": "Customer" if i % 2 else "Agent", "role": "customer" if i % 2 else "agent",
         "text": f"turn {i}"} for i in range(1, 9)]})
    assert view_text("customer_start", c) == "turn 1 turn 3"
    assert view_text("customer_end", c) == "turn 5 turn 7"


def test_a_run_answers_label_tasks_with_its_recorded_predictor(tmp_path, tiny_model_dir):
    """Train (tiny LM) with predictors; evaluate answers the label task with the head, not the LM."""
    from convtune.evaluation.evaluate import evaluate
    from convtune.training import load_config, train

    rows = [c.model_dump(mode="json") for c in toy(5)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["train.max_steps=2", "predictors.encoder_epochs=1", "tasks.names=[need]",
            "predictors.min_validation=3"]
    flags = {"data.train": data, "model.name": str(tiny_model_dir), "output.dir": tmp_path / "run"}
    cfg = load_config(None, overrides=sets, flags=flags)
    result = train(cfg, tasks=[need_task()])
    assert result.metrics["predictors"]["tasks"]["need"]["predictor"] in ("head", "knn")
    assert {r["field"] for r in result.metrics["predictors"]["validation"]} == {"need"}
    test = toy(2, start=700)
    res = evaluate(result.run_dir, test, tasks=[need_task()], device="cpu")
    assert res.settings["predictors"]["need"] in ("head", "knn")
    assert res.tasks["need"].metrics["accuracy"] == 1.0
    lm_only = evaluate(result.run_dir, test, tasks=[need_task()], device="cpu", predictors=False)
    assert lm_only.settings["predictors"]["need"] == "lm"


def test_a_folder_without_a_selection_has_no_predictors(tmp_path):
    assert load_predictors(tmp_path) is None and load_predictors(None) is None


def test_refit_modes_serve_from_train_plus_validation_or_from_train_alone(tmp_path):
    from safetensors.numpy import load_file

    assert PredictorsSection(refit=False).refit == "none" and PredictorsSection(refit=True).refit == "encoder"
    train, val = toy(4), toy(2, start=500)
    banks = {}
    for mode in ("encoder", "heads", "none"):
        run = tmp_path / mode
        sel = fit_predictors(run, [need_task()], train, val, settings=_settings(refit=mode), lm_name="lm",
                             lm_answers=None, seed=0)
        banks[mode] = len(load_file(str(run / "predictors" / "heads.safetensors"))["need.bank_labels"])
        assert sel["encoder"]["refit"] == mode
        assert ("refit_on_validation" in sel["encoder"]) == (mode == "encoder")  # only it re-tunes
        assert sel["fields"]["need"]["label_name_examples"] == 3  # 'refund', 'login', 'upgrade'
    names = 3
    assert banks == {"encoder": len(train) + len(val) + names, "heads": len(train) + len(val) + names,
                     "none": len(train) + names}


def test_label_names_are_examples_and_can_be_turned_off(tmp_path):
    from convtune.predictors.fit import label_text

    assert label_text("pin_reset_request") == "pin reset request" and label_text("card-lost") == "card lost"
    sel = fit_predictors(tmp_path, [need_task()], toy(4), toy(2, start=500),
                         settings=_settings(tune_encoder=False, label_names=False), lm_name="lm",
                         lm_answers=None, seed=0)
    assert "label_name_examples" not in sel["fields"]["need"]
