"""The ``convtune`` command line.

Each verb maps to one small function; the work lives in the library. User
mistakes (any :class:`ConvtuneError`, a missing file) are reported as one line
(or one validation report) on stderr with a non-zero exit code, never a
traceback. Heavy imports happen inside the verbs so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from convtune.errors import ConvtuneError, DataValidationError

EXIT_USER_ERROR = 2
EXIT_DATA_INVALID = 3


def _add_source(p: argparse.ArgumentParser) -> None:
    from convtune.ingest import FORMATS

    p.add_argument("source", type=Path, help="input file")
    p.add_argument("--format", "-f", choices=FORMATS, help="input format (default: detected from the file)")
    p.add_argument(
        "--mapping",
        dest="mapping",
        metavar="KEY=COLUMN,...",
        help="CSV column mapping, e.g. conversation_id=call_id,speaker=who,text=utterance",
    )


def _mapping(args):
    from convtune.ingest import CsvMapping

    return CsvMapping.parse(args.mapping) if args.mapping else None


def cmd_data_import(args) -> int:
    from convtune.data import import_file
    from convtune.models import convtune_home

    out = args.out or convtune_home() / "datasets" / f"{args.source.stem}.jsonl"
    if args.no_redact:
        print("warning: PII redaction is OFF for this import (--no-redact)", file=sys.stderr)
    result, _ = import_file(args.source, out, args.format, mapping=_mapping(args), redact=not args.no_redact)
    red = ", ".join(f"{k}={v}" for k, v in sorted(result.redactions.items())) or "none found"
    print(
        f"imported {result.conversations} conversations ({result.turns} turns) "
        f"from {result.source} [{result.format}] -> {result.output}"
    )
    print(f"PII redactions: {red}" if result.redacted else "PII redaction: off")
    return 0


def cmd_data_validate(args) -> int:
    from convtune.data import load_conversations

    fmt, convs = load_conversations(args.source, args.format, mapping=_mapping(args))
    print(f"ok: {len(convs)} conversations, {sum(len(c.turns) for c in convs)} turns [{fmt}]")
    return 0


def cmd_data_stats(args) -> int:
    from convtune.data import dataset_stats, load_conversations

    _, convs = load_conversations(args.source, args.format, mapping=_mapping(args))
    print(dataset_stats(convs).format())
    return 0


def cmd_data_pii_report(args) -> int:
    from convtune.pii.evaluate import (
        CORPORA,
        PRECISION_FLOOR,
        RECALL_GATES,
        evaluate_corpus,
        gate_failures,
        side_by_side,
    )

    corpora = args.corpus or [Path(c) for c in CORPORA]
    reports = {Path(c).stem: evaluate_corpus(c) for c in corpora}
    print(side_by_side(reports))
    failed = {name: gate_failures(r) for name, r in reports.items()}
    for name, lines in failed.items():
        for line in lines:
            print(f"{name}: {line}")
    if args.json:
        payload = {
            "recall_gates": RECALL_GATES, "precision_floor": PRECISION_FLOOR,
            "corpora": {name: {
                "corpus": str(path),
                "scores": {sc.entity: {"support": sc.support, "tp": sc.tp, "fn": sc.fn,
                                       "predicted": sc.predicted,
                                       "fp": sc.fp, "recall": sc.recall, "precision": sc.precision}
                           for sc in [*r.scores.values(), r.micro]},
                "hard_negatives": r.negatives, "hard_negatives_redacted": r.negatives_hit,
                "gate_failures": failed[name]}
                for (name, r), path in zip(reports.items(), corpora)},
        }
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 1 if any(failed.values()) else 0


def cmd_analytics(args) -> int:
    from convtune.analytics import analyze, format_analytics
    from convtune.data import load_conversations

    _, convs = load_conversations(args.source, args.format, mapping=_mapping(args))
    if args.id:
        convs = [c for c in convs if c.id == args.id]
        if not convs:
            raise ConvtuneError(f"no conversation with id {args.id!r} in {args.source}")
    for conv in convs:
        a = analyze(conv)
        if args.json:
            print(a.model_dump_json())
        else:
            print(format_analytics(a))
            print()
    return 0


def cmd_model_prepare(args) -> int:
    t0 = time.perf_counter()
    # Timed separately: importing torch/transformers (~3 s cold) is Python start-up, not model loading.
    import transformers.modeling_utils  # noqa: F401
    import transformers.tokenization_utils_base  # noqa: F401

    from convtune.models import load_model, resolve_model

    t1 = time.perf_counter()
    folder = resolve_model(args.model)
    t2 = time.perf_counter()
    load_model(str(folder), device="cpu")
    t3 = time.perf_counter()
    print(f"model folder: {folder}")
    print(f"import torch+transformers: {t1 - t0:.1f} s, resolve/convert: {t2 - t1:.1f} s, "
          f"load tokenizer+weights: {t3 - t2:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from convtune import __version__
    from convtune.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(
        prog="convtune",
        description="Tune a small open LLM into a specialist for your company's conversations.",
    )
    parser.add_argument("--version", action="version", version=f"convtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="import, validate and inspect conversation files")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = dsub.add_parser("import", help="validate, redact PII and write convtune JSONL")
    _add_source(p)
    p.add_argument(
        "--out", "-o", type=Path, help="output JSONL (default: $CONVTUNE_HOME/datasets/<name>.jsonl)"
    )
    p.add_argument("--no-redact", action="store_true", help="store raw text: turns PII redaction OFF")
    p.set_defaults(func=cmd_data_import)

    p = dsub.add_parser("validate", help="check a file and report every problem; writes nothing")
    _add_source(p)
    p.set_defaults(func=cmd_data_validate)

    p = dsub.add_parser("stats", help="counts of conversations, turns, channels and labels")
    _add_source(p)
    p.set_defaults(func=cmd_data_stats)

    p = dsub.add_parser("pii-report",
                        help="PII recall/precision per entity type on labelled corpora, side by side")
    p.add_argument("--corpus", type=Path, nargs="+",
                   help="one or more labelled corpora (default: both in benchmarks/)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_data_pii_report)

    p = sub.add_parser("analytics", help="talk time, silence, overlap, pace and interruptions (no model)")
    _add_source(p)
    p.add_argument("--id", help="only this conversation")
    p.add_argument("--json", action="store_true", help="one JSON object per conversation")
    p.set_defaults(func=cmd_analytics)

    from convtune.evaluation.cli import add_chat_parser, add_evaluate_parser
    from convtune.training.cli import add_train_parser

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_chat_parser(sub)

    from convtune.server_cli import add_server_parsers

    add_server_parsers(sub)
    from convtune.jobs.batch_client import add_batch_parser
    from convtune.jobs.client import add_jobs_parser

    add_jobs_parser(sub)
    add_batch_parser(sub)

    from embeddings.cli import add_index_parser

    add_index_parser(sub)

    model = sub.add_parser("base-model", help="prepare base models (tenants' tuned models: convtune models)")
    msub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    p = msub.add_parser("prepare", help="resolve a model (converting the packaged GGUF once) and load it")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    p.set_defaults(func=cmd_model_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataValidationError as exc:
        print(f"convtune: error: {exc.report()}", file=sys.stderr)
        print("nothing was written", file=sys.stderr)
        return EXIT_DATA_INVALID
    except ConvtuneError as exc:
        print(f"convtune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"convtune: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `convtune analytics ... | head` closed the pipe: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("convtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
