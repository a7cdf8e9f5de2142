"""``convtune evaluate``: a tuned run (and its base model) side by side on a labelled test set.

Wired into the ``convtune`` command by :func:`add_evaluate_parser`. Heavy
imports happen inside :func:`cmd_evaluate`, so ``--help`` stays instant.
Errors are :class:`~convtune.errors.ConvtuneError` subclasses; the main CLI
turns them into one line and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convtune.errors import ConfigError

STRATEGIES = ("chained", "independent")  # == generate.STRATEGIES (not imported: keeps --help light)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _budget(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not sep or not key.strip() or n < 1:
        raise argparse.ArgumentTypeError(f"expected TASK_OR_KIND=N with N >= 1, got {text!r}")
    return key.strip(), n


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``convtune`` subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="metrics, parse failures and latency of a tuned run vs its base model on labelled data",
        description="Answer every task about every labelled conversation (batched greedy generation), "
        "parse and score the answers, and report the tuned run and its base model side by side: "
        "a table here, metrics.json, predictions.jsonl and metrics.png in --out.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=Path, metavar="RUN_DIR",
                       help="training run directory (adapter + config)")
    which.add_argument("--model", metavar="REF",
                       help="evaluate only this base model (packaged name, local folder or hub id)")
    p.add_argument("--data", type=Path, required=True, metavar="FILE", help="labelled conversations")
    p.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the run's base model (with the run's prompts) side by side")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="task names (default: the run's tasks)")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the first N conversations")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: RUN_DIR/eval/<data name>, or runs/eval-<model>-<data name>)")
    p.add_argument("--strategy", choices=STRATEGIES, default="chained",
                   help="chained: tasks asked one after another in one chat (transcript computed once); "
                   "independent: one prompt per task (default: chained)")
    p.add_argument("--no-cache", dest="reuse_cache", action="store_false", default=None,
                   help="recompute every prompt instead of reusing the KV cache of the shared prefix")
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                   help="classification tasks pick the most likely label of their label set and "
                   "structured tasks decode guided by their JSON schema, so every answer parses "
                   "(default: each task's own default)")
    p.add_argument("--batch-size", type=_positive, default=8, help="conversations (or prompts) per batch")
    p.add_argument("--max-new-tokens", type=_budget, action="append", metavar="TASK_OR_KIND=N",
                   help="generation budget override, e.g. summary=96 or structured=256 (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--fast-cpu", action=argparse.BooleanOptionalAction, default=False,
                   help="on CPU, decode with the server's 4-bit fast path (convtune serve's default)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 is steadier on busy shared CPUs)")
    p.add_argument("--no-chart", dest="chart", action="store_false", help="skip metrics.png")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the cheap baselines (majority label, extractive summary) from the run's "
                   "training data (default: on for runs)")
    p.add_argument("--predictors", action=argparse.BooleanOptionalAction, default=True,
                   help="answer label tasks with the run's recorded predictors, as serving does "
                   "(--no-predictors: the tuned LM answers every task)")
    p.set_defaults(func=cmd_evaluate)
    return p


def add_chat_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``chat`` on the ``convtune`` subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "chat",
        help="one chat answer from a base model or tuned run, optionally grounded in a collection",
        description="Answer MESSAGE with greedy decoding through the renderer's chat path. With "
        "--collection, the k most similar chunks of that retrieval collection (`convtune index add`) "
        "go into the prompt as delimited, untrusted reference material.",
    )
    p.add_argument("message", help="the user message")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", type=Path, metavar="RUN_DIR", help="training run directory")
    which.add_argument("--model", metavar="REF", help="base model (default: the packaged default model)")
    p.add_argument("--system", help="system message")
    p.add_argument("--collection", "-c", help="retrieval collection to ground the answer in")
    p.add_argument("--tenant", default="default", help="tenant that owns the collection")
    p.add_argument("-k", type=_positive, default=4, help="chunks to retrieve (default 4)")
    p.add_argument("--max-new-tokens", type=_positive, default=256)
    p.add_argument("--show-context", action="store_true", help="print the retrieved chunk ids first")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_chat)
    return p


def cmd_chat(args: argparse.Namespace) -> int:
    from convtune.evaluation.evaluate import is_run_dir, load_for_eval
    from convtune.evaluation.generate import Generator
    from convtune.models import DEFAULT_MODEL

    if not args.message.strip():
        raise ConfigError("the message is empty")
    if args.run is not None and not is_run_dir(args.run):
        raise ConfigError(f"{args.run} is not a training run directory (expected adapter/ and tasks.json)")
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append({"role": "user", "content": args.message})
    context = []
    if args.collection:  # before loading weights: a missing collection fails fast
        from embeddings.grounding import retrieve_context
        from embeddings.store import open_collection

        coll = open_collection(args.collection, args.tenant, create=False)
        context = retrieve_context(coll, args.message, k=args.k)
        coll.close()
        if args.show_context:
            for c in context:
                print(f"[context] {c.source}", file=sys.stderr)
    loaded = load_for_eval(args.run if args.run is not None else (args.model or DEFAULT_MODEL),
                           device=args.device)
    prompt = loaded.renderer.encode_chat(messages, context)
    (out,) = Generator(loaded.model, loaded.tokenizer).generate([prompt.input_ids], args.max_new_tokens)
    print(out.text.strip())
    return 0


def _default_out(args: argparse.Namespace) -> Path:
    stem = args.data.stem
    if args.run is not None:
        return args.run / "eval" / stem
    model = Path(str(args.model)).name.replace("/", "-") or "model"
    return Path("runs") / f"eval-{model}-{stem}"


def _baselines(run_dir: Path, convs: list[Any], tasks: list[Any]) -> list[Any]:
    """Majority-label and extractive baselines from the run's training file (none if it is gone)."""
    import json

    from convtune.data import load_conversations
    from convtune.evaluation.baselines import baselines

    try:
        train_path = Path(json.loads((run_dir / "config.json").read_text())["data"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not train_path.is_file():
        print(f"baselines skipped: the run's training file {train_path} is gone", file=sys.stderr)
        return []
    return baselines(load_conversations(train_path)[1], convs, tasks)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from convtune.data import load_conversations
    from convtune.evaluation.evaluate import base_of, evaluate, is_run_dir, load_for_eval, resolve_tasks
    from convtune.evaluation.report import compare, write_report

    if args.run is not None and not is_run_dir(args.run):
        raise ConfigError(f"{args.run} is not a training run directory (expected adapter/ and tasks.json)")
    _, convs = load_conversations(args.data)  # validate the data before loading any weights
    if args.limit:
        convs = convs[: args.limit]
    budgets = dict(args.max_new_tokens or [])
    out = args.out or _default_out(args)

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_for_eval(args.run if args.run is not None else args.model, device=args.device,
                           fast_cpu=args.fast_cpu)
    tasks = resolve_tasks(args.tasks, run_dir=loaded.run_dir, default=loaded.task_names)
    settings = dict(batch_size=args.batch_size, strategy=args.strategy, reuse_cache=args.reuse_cache,
                    constrained=args.constrained, max_new_tokens=budgets, progress=progress)
    base = tuned = None
    if args.run is not None:
        if args.base:
            print("evaluating the base model ...", file=sys.stderr)
            with base_of(loaded, device=args.device) as base_model:
                base = evaluate(base_model, convs, tasks, name="base", **settings)
        print("evaluating the tuned model ...", file=sys.stderr)
        tuned = evaluate(loaded, convs, tasks, name="tuned", predictors=args.predictors, **settings)
    else:
        print(f"evaluating {args.model} ...", file=sys.stderr)
        base = evaluate(loaded, convs, tasks, name="base", **settings)
    cheap = _baselines(loaded.run_dir, convs, tasks) if args.baselines and loaded.run_dir else []
    comparison = compare(base, tuned, cheap)
    extra = {
        "data": str(args.data),
        "run": str(args.run) if args.run is not None else None,
        "model": args.model,
        "n_conversations": len(convs),
        "tasks": [t.name for t in tasks],
        "fast_cpu": args.fast_cpu,
    }
    paths = write_report(out, base, tuned, extra=extra, chart=args.chart, baselines=cheap)
    print(comparison.format_table())
    for r in (base, tuned):
        if r is not None:
            print(f"{r.name}: {r.n_conversations} conversations in {r.seconds:.1f} s "
                  f"({r.seconds / max(1, r.n_conversations):.2f} s per conversation, {r.strategy}"
                  f"{', cached prefix' if r.reuse_cache else ''})")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
