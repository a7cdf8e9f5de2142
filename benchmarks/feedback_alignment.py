"""Feedback alignment experiment: do users' ratings make the demo model follow their preference?

One command, starting from the demo SFT adapter (``runs/demo/train``, written by
``make demo``; trained here the same way if it is missing):

1. **Serve** the SFT adapter with ``convtune serve`` (a real HTTP server) and ask
   it, through the official ``openai`` client, for ``--samples`` sampled call
   summaries (``n``, temperature 0.8 as the server's ``best_of``) of every sample
   *train* conversation, with the summary task's prompt exactly as the renderer builds it.
2. **Simulated users rate** every answer with ``POST /v1/feedback`` (``rating``
   1-5) by a documented rule the SFT model mostly does not satisfy (below), and
   ``rlhf.feedback.export`` (what ``convtune feedback export`` runs) turns the
   ratings into preference pairs (higher > lower rating, same prompt).
3. **Reward model** (``rlhf.reward.train_reward_model``: TRL RewardTrainer, LoRA +
   scalar head on the base model) on those pairs; pairwise accuracy on its own
   held-out pairs and on pairs from the *test* conversations.
4. **DPO** (``rlhf.align.align``) on the SFT adapter with the same pairs.
5. On the sample **test** split: the preference satisfaction rate of greedy
   summaries, SFT vs DPO, and the core task metrics of both from
   ``convtune.evaluation.evaluate`` (what ``convtune evaluate`` runs); best-of-n
   (``--samples`` SFT samples, the reward model's favourite, as the server's
   ``best_of`` does) next to one random sample and the oracle (any sample passes).

The preference (the simulated user's rule, checked against the reference summary):
a summary must be at most two sentences and at most 30 words, and name both the
customer's issue and the resolution: it shares a content word (4+ letters or a
number, not a stop word or "customer"/"agent"/...) with the reference summary's
first sentence (the issue) and one with the rest (the resolution). Rating = 1 +
the number of these four clauses met; "satisfied" = all four (rating 5).

    HF_HUB_OFFLINE=1 python benchmarks/feedback_alignment.py [--train-conversations 96]
        [--test-conversations 36] [--samples 4] [--work runs/feedback] [--fresh]

Every stage keeps its output under ``--work`` and is skipped when it is there
(``--fresh`` starts over). Prints tables, writes ``benchmarks/results/feedback_alignment.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402

SFT_RUN = ROOT / "runs" / "demo" / "train"
DATA = ROOT / "runs" / "demo" / "data"
CORE_METRICS = {
    "summary": "rougeL",
    "action_items": "f1",
    "intent": "accuracy",
    "sentiment": "overall_accuracy",
}

# ---- the simulated user's rule ------------------------------------------------------------------

MAX_SENTENCES, MAX_WORDS = 2, 30
STOP = set(
    """a an the and or but of to in on at for with by from as is was were be been being are am it its
    this that these those he she his her him they them their we our you your i me my customer customers
    agent agents member caller called call calls asked ask asks said told wanted want wants would could
    should will can did does do had has have after before because so then also about into over not no
    yes which who when while what where how during than there here only just very more most some any all
    one""".split()
)
_WORD = re.compile(r"[A-Za-z0-9$][A-Za-z0-9$'.-]*[A-Za-z0-9]|[A-Za-z0-9]")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]


def content_words(text: str) -> set[str]:
    return {
        w.lower().removesuffix("'s")
        for w in words(text)
        if w.lower() not in STOP and (len(w) >= 4 or any(c.isdigit() for c in w))
    }


def clauses(summary: str, reference: str) -> dict[str, bool]:
    """The four clauses of the preference for one summary, judged against the reference summary."""
    ref = sentences(reference)
    issue = content_words(ref[0]) if ref else set()
    resolution = content_words(" ".join(ref[1:])) - issue
    got = content_words(summary)
    return {
        "at_most_2_sentences": 1 <= len(sentences(summary)) <= MAX_SENTENCES,
        "at_most_30_words": 1 <= len(words(summary)) <= MAX_WORDS,
        "names_issue": bool(got & issue),
        "names_resolution": bool(got & resolution),
    }


def rating(summary: str, reference: str) -> int:
    return 1 + sum(clauses(summary, reference).values())


def satisfied(summary: str, reference: str) -> bool:
    return rating(summary, reference) == 5


# ---- stages -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_sft_run() -> None:
    """The demo's SFT adapter (`make demo` steps 1-3) when it is not there yet."""
    if (SFT_RUN / "metrics.json").is_file() and (DATA / "test.jsonl").is_file():
        return
    log("no demo SFT run: preparing the sample data and training it (make demo steps 1-3, ~6 min)")
    sys.path.insert(0, str(ROOT / "examples"))
    import demo

    from convtune.cli import main as convtune

    demo.prepare_data()
    rc = convtune(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--out",
            str(SFT_RUN),
            "--set",
            "output.overwrite=true",
        ]
    )
    if rc:
        raise SystemExit(f"demo training failed (exit {rc})")


def summary_prompts(convs: Sequence[Any]) -> list[list[dict[str, str]]]:
    """The summary task's chat messages per conversation, exactly as evaluation and analyze build them."""
    from convtune.evaluation.evaluate import resolve_tasks
    from convtune.renderer import TaskTurn
    from rlhf.common import load_run_parts

    _, _, renderer = load_run_parts(SFT_RUN)
    (task,) = resolve_tasks(["summary"], run_dir=SFT_RUN)
    return [renderer.messages(c, [TaskTurn(task.instruction)])[0] for c in convs]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def sample(
    server: Any, convs: Sequence[Any], knobs: tuple[int, float, int, int], seed: int, desc: str, out: Path
) -> list[dict[str, Any]]:
    """``n`` sampled summaries per conversation from the served SFT adapter (openai client, real HTTP),
    written to ``out`` as they arrive: a rerun after a failure asks only for the missing ones."""
    import threading

    import openai
    from tqdm import tqdm

    n, temperature, max_tokens, concurrency = knobs
    partial = out.with_suffix(".partial.jsonl")
    have = {r["conversation"]: r for r in read_jsonl(partial)} if partial.is_file() else {}
    lock = threading.Lock()

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=2, timeout=900)
    prompts = summary_prompts(convs)

    def one(i: int) -> dict[str, Any]:
        r = client.chat.completions.create(
            model=server.model_id,
            messages=prompts[i],
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed + i,
        )
        row = {
            "conversation": convs[i].id,
            "response_id": r.id,
            "reference": convs[i].labels["summary"],
            "texts": [c.message.content or "" for c in r.choices],
        }
        with lock, partial.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return row

    todo = [i for i, c in enumerate(convs) if c.id not in have]
    with ThreadPoolExecutor(concurrency) as pool:
        for row in tqdm(
            pool.map(one, todo), total=len(convs), initial=len(convs) - len(todo), desc=desc, unit="conv"
        ):
            have[row["conversation"]] = row
    rows = [have[c.id] for c in convs]
    write_jsonl(out, rows)
    partial.unlink()
    return rows


def rate_and_export(
    server: Any,
    samples: list[dict[str, Any]],
    prompts: list[list[dict[str, str]]],
    home: Path,
    pairs_per_prompt: int,
    out: Path,
) -> dict[str, Any]:
    """Simulated users rate every sampled answer (POST /v1/feedback); export -> preference pairs."""
    import httpx2 as httpx

    from convtune.jobs.db import JobsDB, default_url
    from rlhf.feedback import export, redact_messages

    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as http:
        for s in samples:
            for j, text in enumerate(s["texts"]):
                r = http.post(
                    "/v1/feedback",
                    json={
                        "response_id": s["response_id"],
                        "choice": j,
                        "type": "rating",
                        "value": rating(text, s["reference"]),
                    },
                )
                r.raise_for_status()
    pairs, kto = export(JobsDB(default_url(home)), "bench")
    # the export holds what the server kept: PII-redacted prompts and answers
    reference = {
        json.dumps(redact_messages(p)): s["reference"] for p, s in zip(prompts, samples, strict=True)
    }
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for p in pairs:
        by_prompt.setdefault(json.dumps(p["input"]["messages"]), []).append(p)
    kept = []
    for key, group in by_prompt.items():  # the biggest rating gaps first, at most pairs_per_prompt
        ref = reference[key]
        group.sort(
            key=lambda p: (
                rating(p["non_preferred_output"][0]["content"], ref)
                - rating(p["preferred_output"][0]["content"], ref)
            )
        )
        kept.extend(group[:pairs_per_prompt])
    random.Random(0).shuffle(kept)
    write_jsonl(out, kept)
    return {
        "answers_rated": sum(len(s["texts"]) for s in samples),
        "exported_pairs": len(pairs),
        "kto_examples": len(kto),
        "pairs_used": len(kept),
        "prompts_with_pairs": len(by_prompt),
    }


def test_pairs(samples: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(sample index, better, worse) for every two test answers of one prompt with different ratings."""
    out = []
    for k, s in enumerate(samples):
        r = [rating(t, s["reference"]) for t in s["texts"]]
        out.extend((k, a, b) for a in range(len(r)) for b in range(len(r)) if r[a] > r[b])
    return out


def reward_scores(reward_dir: Path, convs: Sequence[Any], samples: list[dict[str, Any]]) -> list[list[float]]:
    """Reward of every test sample, with the server's best-of-n scorer and inputs."""
    from tqdm import tqdm

    from rlhf.common import load_run_parts
    from rlhf.reward import RewardScorer, reward_input_ids

    _, tokenizer, renderer = load_run_parts(SFT_RUN)
    scorer = RewardScorer(reward_dir)
    prompts = summary_prompts(convs)
    return [
        scorer.score([reward_input_ids(renderer, tokenizer, prompts[k], t) for t in s["texts"]])
        for k, s in enumerate(tqdm(samples, desc="reward model scores test samples", unit="conv"))
    ]


def evaluate_run(run: Path, convs: Sequence[Any], name: str, out: Path) -> dict[str, Any]:
    """``convtune evaluate`` on one run: per-task metrics and the greedy summaries."""
    from convtune.evaluation.evaluate import evaluate

    res = evaluate(run, convs, name=name, progress=lambda m: log(f"{name}: {m}"))
    data = {
        "seconds": round(res.seconds, 1),
        "metrics": {t: r.metrics for t, r in res.tasks.items()},
        "summaries": {r["conversation_id"]: r["output"] for r in res.records if r["task"] == "summary"},
    }
    out.write_text(json.dumps(data, indent=1))
    return data


def stage(timings: dict[str, float], name: str, done: Path, run: Any) -> None:
    """Run one stage unless its output ``done`` is there (an earlier run made it); time it."""
    if done.exists():
        log(f"{name}: reusing {done}")
        return
    log(f"{name} ...")
    t0 = time.time()
    run()
    timings[f"{name}_s"] = round(time.time() - t0, 1)


def rate_of(texts_refs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    n = len(texts_refs)
    per = [clauses(t, r) for t, r in texts_refs]
    return {
        "satisfied": round(sum(all(c.values()) for c in per) / n, 4),
        **{k: round(sum(c[k] for c in per) / n, 4) for k in per[0]},
        "mean_words": round(sum(len(words(t)) for t, _ in texts_refs) / n, 1),
        "n": n,
    }


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-conversations", type=int, default=64, help="sample train conversations rated")
    ap.add_argument("--test-conversations", type=int, default=36, help="sample test conversations scored")
    ap.add_argument("--samples", type=int, default=4, help="answers sampled per prompt (n)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (best_of's default)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight while sampling")
    ap.add_argument("--pairs-per-prompt", type=int, default=2)
    ap.add_argument("--rm-epochs", type=int, default=2)
    ap.add_argument("--rm-lr", type=float, default=3e-4)
    ap.add_argument("--dpo-epochs", type=int, default=1)
    ap.add_argument("--dpo-lr", type=float, default=5e-5, help="5e-5 (convtune align's default)")
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="largest drop of a core task's primary metric (absolute) that counts as no regression",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "feedback")
    ap.add_argument("--fresh", action="store_true", help="start over (delete --work)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "feedback_alignment.json")
    args = ap.parse_args(argv)

    from convtune.data import load_conversations
    from rlhf.align import AlignConfig, align
    from rlhf.reward import RewardModelConfig, train_reward_model

    t_start = time.time()
    ensure_sft_run()
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    train = load_conversations(DATA / "train.jsonl")[1][: args.train_conversations]
    test = load_conversations(DATA / "test.jsonl")[1][: args.test_conversations]
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rule": __doc__.split("The preference")[1].split("\n\n")[0].strip(),
    }

    # 1-2. serve the SFT adapter, sample, rate, export ----------------------------------------------
    prefs, train_s, test_s = (
        work / "preferences.jsonl",
        work / "train_samples.jsonl",
        work / "test_samples.jsonl",
    )
    if not (prefs.is_file() and test_s.is_file()):
        from benchmarks.serve_load import ServerProcess

        home = work / "home"  # the server's keys, models and kept generations (kept for a rerun)
        home.mkdir(parents=True, exist_ok=True)
        log("starting convtune serve with the demo SFT adapter")
        server = ServerProcess(
            SimpleNamespace(served_name="smollm2-135m-instruct", adapter=SFT_RUN, max_batch_size=16),
            home,
            extra=["--no-worker"],
        )
        knobs = (args.samples, args.temperature, args.max_tokens, args.concurrency)
        try:
            t0 = time.time()
            s = (
                read_jsonl(train_s)
                if train_s.is_file()
                else sample(server, train, knobs, args.seed, "sampling train summaries", train_s)
            )
            timings["sample_train_s"] = round(time.time() - t0, 1)
            if not prefs.is_file():
                fb = rate_and_export(server, s, summary_prompts(train), home, args.pairs_per_prompt, prefs)
                (work / "feedback.json").write_text(json.dumps(fb, indent=1))
            t0 = time.time()
            if not test_s.is_file():
                sample(server, test, knobs, args.seed + 10_000, "sampling test summaries", test_s)
            timings["sample_test_s"] = round(time.time() - t0, 1)
        finally:
            server.close()
    result["feedback"] = json.loads((work / "feedback.json").read_text())
    train_samples, test_samples = read_jsonl(train_s), read_jsonl(test_s)
    result["sft_samples"] = {
        "train": rate_of([(t, s["reference"]) for s in train_samples for t in s["texts"]]),
        "test": rate_of([(t, s["reference"]) for s in test_samples for t in s["texts"]]),
    }
    log(f"feedback: {result['feedback']}")

    # 3. reward model ---------------------------------------------------------------------------------
    rm_dir = work / "reward"
    rm_cfg = RewardModelConfig(
        run=SFT_RUN, data=prefs, out=rm_dir, epochs=args.rm_epochs, lr=args.rm_lr, seed=args.seed
    )
    stage(timings, "reward_model", rm_dir / "metrics.json", lambda: train_reward_model(rm_cfg))
    rm_metrics = json.loads((rm_dir / "metrics.json").read_text())
    rewards_file = work / "test_rewards.json"
    stage(
        timings,
        "reward_scores",
        rewards_file,
        lambda: rewards_file.write_text(json.dumps(reward_scores(rm_dir, test, test_samples))),
    )
    rewards = json.loads(rewards_file.read_text())
    tp = test_pairs(test_samples)
    held = [
        1.0 if rewards[k][a] > rewards[k][b] else 0.5 if rewards[k][a] == rewards[k][b] else 0.0
        for k, a, b in tp
    ]
    best = [
        s["texts"][max(range(len(r)), key=r.__getitem__)] for s, r in zip(test_samples, rewards, strict=True)
    ]
    result["reward_model"] = {
        "train_pairs": rm_metrics["train_pairs"],
        "held_out_pairs": rm_metrics["held_out_pairs"],
        "pairwise_accuracy_held_out_train_pairs": rm_metrics["pairwise_accuracy"],
        "test_pairs": len(tp),
        "pairwise_accuracy_test_conversations": round(sum(held) / len(held), 4) if held else None,
        "steps": rm_metrics["steps"],
        "seconds": rm_metrics["seconds"],
    }
    refs = [s["reference"] for s in test_samples]
    result["best_of_n"] = {
        "n": args.samples,
        "one_random_sample": result["sft_samples"]["test"]["satisfied"],
        "best_of_n_reward_model": rate_of(list(zip(best, refs, strict=True)))["satisfied"],
        "oracle_any_sample": round(
            sum(any(satisfied(t, s["reference"]) for t in s["texts"]) for s in test_samples)
            / len(test_samples),
            4,
        ),
        "best_of_n_mean_words": rate_of(list(zip(best, refs, strict=True)))["mean_words"],
    }
    log(f"reward model: {result['reward_model']}; best-of-n: {result['best_of_n']}")

    # 4. DPO --------------------------------------------------------------------------------------------
    dpo_dir = work / f"dpo-lr{args.dpo_lr:g}-beta{args.dpo_beta:g}-ep{args.dpo_epochs}"  # one per setting
    dpo_cfg = AlignConfig(
        run=SFT_RUN,
        data=prefs,
        out=dpo_dir,
        method="dpo",
        beta=args.dpo_beta,
        lr=args.dpo_lr,
        epochs=args.dpo_epochs,
        seed=args.seed,
    )
    stage(timings, "dpo", dpo_dir / "metrics.json", lambda: align(dpo_cfg))
    dm = json.loads((dpo_dir / "metrics.json").read_text())
    result["dpo"] = {
        k: dm[k] for k in ("examples", "steps", "beta", "lr", "final_loss", "reward_accuracy", "seconds")
    }

    # 5. held-out evaluation: SFT vs DPO ------------------------------------------------------------------
    evals = {}
    for name, run in (("sft", SFT_RUN), ("dpo", dpo_dir)):
        f = work / f"eval_{run.name if name == 'dpo' else name}.json"
        stage(timings, f"eval_{name}", f, lambda run=run, name=name, f=f: evaluate_run(run, test, name, f))
        evals[name] = json.loads(f.read_text())
    ref_of = {c.id: c.labels["summary"] for c in test}
    result["preference_greedy"] = {
        name: rate_of([(text, ref_of[cid]) for cid, text in e["summaries"].items()])
        for name, e in evals.items()
    }
    result["task_metrics"] = {}
    for task, metric in CORE_METRICS.items():
        sft, dpo = (evals[m]["metrics"][task].get(metric) for m in ("sft", "dpo"))
        result["task_metrics"][task] = {
            "metric": metric,
            "sft": sft,
            "dpo": dpo,
            "parse_failure_sft": evals["sft"]["metrics"][task].get("parse_failure_rate"),
            "parse_failure_dpo": evals["dpo"]["metrics"][task].get("parse_failure_rate"),
            "within_tolerance": sft is not None and dpo is not None and dpo >= sft - args.tolerance,
        }
    pg = result["preference_greedy"]
    result["verdict"] = {
        "dpo_raises_satisfaction": pg["dpo"]["satisfied"] > pg["sft"]["satisfied"],
        "no_task_regression_beyond_tolerance": all(
            v["within_tolerance"] for v in result["task_metrics"].values()
        ),
        "reward_model_beats_chance": (result["reward_model"]["pairwise_accuracy_test_conversations"] or 0)
        > 0.6,
    }
    tfile = work / "timings.json"
    earlier = json.loads(tfile.read_text()) if tfile.is_file() else {}
    result["timings_s"] = {**earlier, **timings, "total_this_run_s": round(time.time() - t_start, 1)}
    tfile.write_text(json.dumps(result["timings_s"]))
    result["machine"] = machine()
    print_tables(result, args)
    return write_result(args.out, result)


def print_tables(r: dict[str, Any], args: argparse.Namespace) -> None:
    pg, bo, rm = r["preference_greedy"], r["best_of_n"], r["reward_model"]
    print(f"\nPreference satisfaction on {pg['sft']['n']} held-out test conversations (greedy summaries)")
    print(
        f"{'':<6}{'satisfied':>10}{'<=2 sent':>10}{'<=30 words':>11}{'issue':>7}{'resolution':>11}"
        f"{'words':>7}"
    )
    for name in ("sft", "dpo"):
        p = pg[name]
        print(
            f"{name:<6}{p['satisfied']:>10.1%}{p['at_most_2_sentences']:>10.1%}{p['at_most_30_words']:>11.1%}"
            f"{p['names_issue']:>7.1%}{p['names_resolution']:>11.1%}{p['mean_words']:>7}"
        )
    print(
        f"\nBest-of-{bo['n']} from the SFT adapter (same test conversations, "
        f"sampled at temperature {args.temperature})"
    )
    print(
        f"  one random sample {bo['one_random_sample']:.1%} | reward model's pick "
        f"{bo['best_of_n_reward_model']:.1%} | oracle (any sample) {bo['oracle_any_sample']:.1%}"
    )
    print(
        f"\nReward model: pairwise accuracy {rm['pairwise_accuracy_test_conversations']:.1%} "
        f"on {rm['test_pairs']} "
        f"test-conversation pairs, {rm['pairwise_accuracy_held_out_train_pairs']:.1%} on its "
        f"{rm['held_out_pairs']} held-out train pairs ({rm['train_pairs']} trained on)"
    )
    print(f"\nCore task metrics, SFT vs DPO (tolerance: a drop of at most {args.tolerance})")
    print(f"{'task':<14}{'metric':<18}{'sft':>8}{'dpo':>8}{'ok':>5}")
    for task, m in r["task_metrics"].items():
        fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(
            f"{task:<14}{m['metric']:<18}{fmt(m['sft'])}{fmt(m['dpo'])}"
            f"{'yes' if m['within_tolerance'] else 'NO':>5}"
        )
    print(f"\nverdict: {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
