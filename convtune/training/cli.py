"""``convtune train``: the argparse wiring. ``convtune/cli.py`` calls :func:`add_train_parser`.

Also runnable on its own: ``python -m convtune.training train --config configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convtune.errors import ConvtuneError, DataValidationError

EXIT_USER_ERROR = 2
EXIT_DATA_INVALID = 3
EXIT_INTERRUPTED = 130

_EPILOG = """\
examples:
  convtune train --config configs/demo.yaml
  convtune train --train runs/train.jsonl --out runs/my-run --set train.lr=1e-4 --set lora.r=8
  convtune train --out runs/my-run --resume          # continue after Ctrl-C or a crash
  convtune train --config configs/demo.yaml --dry-run  # validate + count examples, load no weights

config keys (--set GROUP.KEY=VALUE; values are read as YAML):
  model.name  data.{train,validation,validation_fraction,format,validation_format,max_transcript_tokens,limit}
  tasks.{names,files,weights,labels,labels_from_data,intent_labels}  lora.{r,alpha,dropout,target_modules}
  train.{epochs,max_steps,max_tokens_budget,lr,lr_scheduler,warmup_ratio,weight_decay,max_grad_norm,
         batch_size,grad_accum,max_seq_len,seed,eval_every,save_every,log_every,device,
         gradient_checkpointing,padding_free}
  output.{dir,keep_checkpoints,max_checkpoints,overwrite}
"""


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "train",
        help="LoRA fine-tune the base model on labelled conversations (multi-task SFT)",
        description="Multi-task LoRA SFT. Every problem in the config and data is reported before any "
                    "weights load; Ctrl-C saves a checkpoint that --resume continues from.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", type=Path, help="YAML/JSON config file (see configs/demo.yaml)")
    p.add_argument("--train", dest="train_path", type=Path, metavar="FILE", help="training conversations")
    p.add_argument("--val", type=Path, metavar="FILE",
                   help="validation conversations (default: a split of train)")
    p.add_argument("--model", help="base model: packaged name, local folder or hub id")
    p.add_argument("--out", "-o", type=Path, metavar="RUN_DIR",
                   help="run directory (default: runs/train-<time>)")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (overrides train.epochs)")
    p.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR from its newest complete checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="validate and build the examples; load no weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    p.set_defaults(func=cmd_train)
    return p


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    from convtune.training.config import load_config

    cfg = load_config(
        args.config,
        overrides=args.overrides,
        flags={"data.train": args.train_path, "data.validation": args.val, "model.name": args.model,
               "output.dir": args.out, "train.max_steps": args.max_steps},
        resume=args.resume,
        defer=True,  # train() reports config, task and data problems together
    )
    from convtune.training.trainer import TrainingInterrupted, train

    try:
        result = train(cfg, resume=args.resume, dry_run=args.dry_run, progress=not args.no_progress,
                       report=_stderr)
    except TrainingInterrupted as exc:
        print(f"convtune: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.dry_run:
        print(json.dumps(result.plan, indent=2))
        print(f"config ok; would write {result.run_dir}")
    else:
        m = result.metrics
        print(f"trained {result.steps} steps: train loss {m['final_train_loss']}, eval loss "
              f"{m['final_eval_loss']}; {m['tokens_per_second']} tokens/s, {m['pairs_per_second']} pairs/s")
        print(f"run directory: {result.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m convtune.training``), with ``convtune``'s error conventions."""
    parser = argparse.ArgumentParser(prog="convtune")
    add_train_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DataValidationError as exc:
        print(f"convtune: error: {exc.report()}", file=sys.stderr)
        return EXIT_DATA_INVALID
    except ConvtuneError as exc:
        print(f"convtune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("convtune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
