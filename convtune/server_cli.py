"""``convtune keys``, ``convtune models``, ``convtune serve``, ``convtune worker``, ``convtune feedback``.

Keys and registered models live in ``$CONVTUNE_HOME`` (see
:mod:`convtune.tenancy`). ``convtune serve`` hands its flags to the server
package by name (``serve.cli``), so the core never imports the server.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any


def _home() -> Path:
    from convtune.models import convtune_home

    return convtune_home()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from convtune.tenancy import KeyStore

    key = KeyStore(_home() / "server.sqlite").create(args.tenant)
    print(key)  # shown once; only its hash is stored
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from convtune.tenancy import KeyStore

    for k in KeyStore(_home() / "server.sqlite").list(args.tenant):
        print(f"{k.prefix}...  tenant={k.tenant}  created={k.created_at}{'  REVOKED' if k.revoked else ''}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from convtune.tenancy import KeyStore

    n = KeyStore(_home() / "server.sqlite").revoke(args.prefix)
    print(f"revoked {n} key(s)")
    return 0 if n else 2


def cmd_models_add(args: argparse.Namespace) -> int:
    from convtune.tenancy import ModelStore

    store = ModelStore(_home())
    best_of = None
    if args.best_of is not None or args.reward_model is not None:
        from convtune.errors import ConfigError
        from rlhf.reward import is_reward_model

        if args.best_of is None or args.reward_model is None:
            raise ConfigError("--best-of and --reward-model go together")
        rm = store.get(args.tenant, args.reward_model)
        if rm is None or not is_reward_model(rm.path):
            raise ConfigError(f"{args.reward_model!r} is not one of tenant {args.tenant}'s reward models")
        best_of = {"n": args.best_of, "reward_model": args.reward_model}
    m = store.add(args.tenant, args.name, args.run, replace=args.replace, best_of=best_of)
    extra = f", best-of-{args.best_of} by {args.reward_model}" if best_of else ""
    print(f"tenant {m.tenant}: model {m.name!r} (base {m.base_model}{extra}) -> {m.path}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from convtune.tenancy import ModelStore

    for m in ModelStore(_home()).list(args.tenant):
        print(json.dumps({"id": m.name, "base_model": m.base_model, "created": m.created_at}))
    return 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    from convtune.tenancy import ModelStore

    if not ModelStore(_home()).remove(args.tenant, args.name):
        print(f"tenant {args.tenant} has no model {args.name!r}")
        return 2
    return 0


SERVE_FLAGS = ("host", "port", "workers", "base_model", "device", "fast_cpu", "cpu_weights",
               "max_concurrent_requests",
               "max_batch_size", "max_loaded_adapters", "request_timeout_s", "max_tokens_limit",
               "database_url", "worker", "jobs_per_tenant", "batch_runner", "batch_concurrency",
               "webhook_allow", "webhook_url")


def cmd_serve(args: argparse.Namespace) -> int:
    flags: dict[str, Any] = {k: getattr(args, k) for k in SERVE_FLAGS if getattr(args, k) is not None}
    return importlib.import_module("serve.cli").run(flags)


def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from convtune.jobs.db import JobsDB, default_url
    from convtune.jobs.worker import Worker, WorkerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = _home()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    settings = WorkerSettings(max_jobs=args.max_jobs, per_tenant=args.jobs_per_tenant, poll_s=args.poll_s,
                              stale_s=args.stale_s)
    Worker(JobsDB(args.database_url or default_url(home)), home, settings).run(stop)
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from convtune.jobs.db import JobsDB, default_url
    from convtune.tenancy import check_tenant
    from rlhf.feedback import export

    check_tenant(args.tenant)
    pairs, kto = export(JobsDB(args.database_url or default_url(_home())), args.tenant)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("preferences.jsonl", pairs), ("kto.jsonl", kto)):
        tmp = args.out / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(args.out / name)
    print(f"{len(pairs)} preference pairs -> {args.out / 'preferences.jsonl'}; "
          f"{len(kto)} KTO examples -> {args.out / 'kto.jsonl'}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from rlhf.align import AlignConfig, align

    cfg = AlignConfig(run=args.run, data=args.data, out=args.out, method=args.method, beta=args.beta,
                      epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed)
    m = align(cfg)
    print(f"{m['method']}: {m['steps']} steps on {m['examples']} examples, final loss {m['final_loss']}, "
          f"reward accuracy {m['reward_accuracy']} -> {args.out}")
    return 0


def cmd_online(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from convtune.errors import ConfigError
    from rlhf.online import OnlineConfig, online

    try:
        cfg = OnlineConfig(run=args.run, data=args.data, out=args.out, task=args.task,
                           reward_model=args.reward_model, metric_weight=args.metric_weight,
                           reward_model_weight=args.reward_model_weight, num_generations=args.num_generations,
                           max_completion_length=args.max_completion_length, beta=args.beta,
                           max_steps=args.max_steps, lr=args.lr, seed=args.seed)
    except ValidationError as exc:
        raise ConfigError("; ".join(e["msg"] for e in exc.errors())) from None
    m = online(cfg)
    last = m["reward"][-1][1] if m["reward"] else None
    print(f"rloo: {m['steps']} steps on {m['prompts']} {cfg.task} prompts, final mean reward {last} "
          f"-> {args.out}")
    return 0


def cmd_reward(args: argparse.Namespace) -> int:
    from rlhf.reward import RewardModelConfig, train_reward_model

    cfg = RewardModelConfig(run=args.run, data=args.data, out=args.out, held_out=args.held_out,
                            epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, seed=args.seed)
    m = train_reward_model(cfg)
    print(f"reward model: {m['steps']} steps on {m['train_pairs']} pairs; pairwise accuracy on "
          f"{m['held_out_pairs']} held-out pairs {m['pairwise_accuracy']:.3f} -> {args.out}")
    return 0


def add_server_parsers(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys of tenants (stored hashed)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("create", help="create a key for a tenant and print it (shown once)")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_keys_create)
    p = ksub.add_parser("list", help="key prefixes, tenants and creation times")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_keys_list)
    p = ksub.add_parser("revoke", help="revoke a key by its first characters")
    p.add_argument("prefix")
    p.set_defaults(func=cmd_keys_revoke)

    models = sub.add_parser("models", help="tenants' servable models (finished training runs)")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = msub.add_parser("add", help="register a training run as a tenant's model id")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", required=True, help="the model id clients send")
    p.add_argument("--replace", action="store_true", help="replace an existing model of that name")
    p.add_argument("--best-of", type=int, metavar="N",
                   help="chat answers default to the best of N samples (2-16) by --reward-model")
    p.add_argument("--reward-model", help="one of the tenant's registered reward models")
    p.set_defaults(func=cmd_models_add)
    p = msub.add_parser("list", help="a tenant's models")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_models_list)
    p = msub.add_parser("remove", help="unregister a tenant's model")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_models_remove)

    p = sub.add_parser("serve", help="run the API server (OpenAI + Nebula compatible)",
                       description="Start the server. Flags override CONVTUNE_SERVE_<SETTING> variables.")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="worker processes (each loads the model)")
    p.add_argument("--base-model", help="base model (default: smollm2-135m-instruct)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--fast-cpu", action=argparse.BooleanOptionalAction, default=None,
                   help="on CPU, decode with 4-bit (or --cpu-weights int8) weights (default: yes)")
    p.add_argument("--cpu-weights", choices=("int4", "int8"),
                   help="the fast CPU path's weights (default int4; README for cost)")
    p.add_argument("--max-concurrent-requests", type=int, help="in flight before 429 (default 128)")
    p.add_argument("--max-batch-size", type=int, help="sequences decoded together (default 16)")
    p.add_argument("--max-loaded-adapters", type=int, help="LoRA adapters kept in memory (default 8)")
    p.add_argument("--request-timeout-s", type=float, help="per-request deadline (default 300)")
    p.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask (default 1024)")
    p.add_argument("--database-url", help="jobs metadata (default sqlite:///HOME/jobs.sqlite; or postgresql+psycopg://...)")
    p.add_argument("--worker", action=argparse.BooleanOptionalAction, default=None,
                   help="also run a fine-tuning job worker (default: yes)")
    p.add_argument("--jobs-per-tenant", type=int, help="running fine-tuning jobs per tenant (default 1)")
    p.add_argument("--batch-runner", action=argparse.BooleanOptionalAction, default=None,
                   help="process batches (/v1/batches) at background priority (default: yes)")
    p.add_argument("--batch-concurrency", type=int, help="batch lines in the engine at once (default 16)")
    p.add_argument("--webhook-allow", help="hosts batch webhooks may go to (default 127.0.0.1,localhost,::1)")
    p.add_argument("--webhook-url", help="webhook of batches that name none in metadata.webhook_url")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run fine-tuning jobs from the queue (convtune serve starts one too)",
                       description="Take queued fine-tuning jobs from the database and run each in its own "
                       "process; recover jobs whose process died. Ctrl-C/SIGTERM checkpoints running jobs.")
    p.add_argument("--database-url", help="default: sqlite:///HOME/jobs.sqlite")
    p.add_argument("--max-jobs", type=int, default=1, help="job processes at once (default 1)")
    p.add_argument("--jobs-per-tenant", type=int, default=1, help="running jobs per tenant (default 1)")
    p.add_argument("--poll-s", type=float, default=1.0, help="queue poll interval (default 1 s)")
    p.add_argument("--stale-s", type=float, default=30.0,
                   help="a running job without a heartbeat this long is resumed elsewhere (default 30 s)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("align", help="DPO or KTO on top of a finished SFT run (preference data)",
                       description="Align a run's adapter with TRL DPO (preference pairs) or KTO (labelled "
                       "outputs); the reference is the same adapter, frozen. Writes a new run directory.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="the SFT run to start from")
    p.add_argument("--data", type=Path, required=True, help="preferences.jsonl (dpo) or kto.jsonl (kto)")
    p.add_argument("--out", type=Path, required=True, help="the new run directory")
    p.add_argument("--method", choices=("dpo", "kto"), default="dpo")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("reward-model", help="train a reward model (LoRA + scalar head) on preference pairs",
                       description="TRL RewardTrainer on the run's base model; reports pairwise accuracy on "
                       "held-out pairs.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run: its base model, tokenizer, renderer")
    p.add_argument("--data", type=Path, required=True, help="preferences.jsonl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--held-out", type=float, default=0.2, help="share of pairs kept out to score (0.2)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_reward)

    p = sub.add_parser("online-rl", help="RLOO on top of a finished SFT run (task metric + reward model)",
                       description="Sample answers to a task's prompts on labelled conversations and train "
                       "the run's adapter with TRL RLOO, rewarded by its metric against the gold label "
                       "and/or a reward model. Writes a new run directory.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="the SFT run to start from")
    p.add_argument("--data", type=Path, required=True, help="labelled conversations")
    p.add_argument("--out", type=Path, required=True, help="the new run directory")
    p.add_argument("--task", default="summary")
    p.add_argument("--reward-model", type=Path, help="a reward model run (convtune reward-model)")
    p.add_argument("--metric-weight", type=float, default=1.0, help="0: reward model only")
    p.add_argument("--reward-model-weight", type=float, default=1.0)
    p.add_argument("--num-generations", type=int, default=4, help="answers sampled per prompt")
    p.add_argument("--max-completion-length", type=int, default=96)
    p.add_argument("--beta", type=float, default=0.0, help="KL penalty to the frozen SFT adapter")
    p.add_argument("--max-steps", type=int, default=16, help="CPU: each step samples and trains (16)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_online)

    fb = sub.add_parser("feedback", help="users' feedback on served generations")
    fsub = fb.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    p = fsub.add_parser("export", help="a tenant's feedback as preference pairs (DPO) and KTO labels")
    p.add_argument("--tenant", required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for preferences.jsonl and kto.jsonl")
    p.add_argument("--database-url", help="default: sqlite:///HOME/jobs.sqlite")
    p.set_defaults(func=cmd_feedback_export)
