"""``convtune batch create|list|show|cancel|results``: the Batch API from the command line.

Like ``convtune jobs``: a running server (``--url``, default ``$CONVTUNE_URL`` or
http://localhost:8000), ``$CONVTUNE_API_KEY``, stdlib HTTP. ``create`` uploads the file
(``purpose=batch``; a file with problems is reported line by line and nothing starts), creates
the batch and, with ``--follow``, shows a progress bar fed by its ``request_counts`` until it
ends; Ctrl-C stops following, not the batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from convtune.errors import ConvtuneError
from convtune.jobs.client import Api, _api, server_args

ENDPOINTS = ("/v1/conversations/analyze", "/v1/chat/completions", "/v1/embeddings")
ENDED = ("completed", "failed", "expired", "cancelled")


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConvtuneError(f"--metadata takes KEY=VALUE, not {pair!r}")
        out[key] = value
    return out or None


def cmd_create(args: argparse.Namespace) -> int:
    api = _api(args)
    f = api.upload(args.file, None, purpose="batch")
    if f["status"] != "processed":
        print(f"upload {f['id']}: {f['status']}\n{f['status_details']}", file=sys.stderr)
        return 3
    print(f"uploaded {args.file} -> {f['id']} ({f['records']} requests)", file=sys.stderr)
    body = {"input_file_id": f["id"], "endpoint": args.endpoint, "completion_window": "24h",
            "metadata": _metadata(args.metadata)}
    batch = api.call("POST", "/v1/batches", body)
    print(batch["id"])
    return follow(api, batch["id"]) if args.follow else 0


def follow(api: Api, batch_id: str, poll_s: float = 1.0) -> int:
    """A progress bar over the batch's lines until it ends; 0 if it completed without failed lines."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=batch_id[-8:], unit="req", file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            b = api.call("GET", f"/v1/batches/{batch_id}")
            counts = b["request_counts"]
            bar.total = counts["total"]
            bar.n = counts["completed"] + counts["failed"]
            bar.set_postfix(status=b["status"], failed=counts["failed"])
            bar.refresh()
            if b["status"] in ENDED:
                bar.close()
                print(f"{b['status']}: {counts['completed']} completed, {counts['failed']} failed; "
                      f"output {b['output_file_id'] or '-'}, errors {b['error_file_id'] or '-'}",
                      file=sys.stderr)
                return 0 if b["status"] == "completed" and not counts["failed"] else 1
            time.sleep(poll_s)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped following; the batch goes on (convtune batch show {batch_id})", file=sys.stderr)
        return 130


def cmd_list(args: argparse.Namespace) -> int:
    for b in _api(args).call("GET", f"/v1/batches?limit={args.limit}")["data"]:
        c = b["request_counts"]
        print(f"{b['id']}  {b['status']:<12} {c['completed'] + c['failed']}/{c['total']}  {b['endpoint']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(_api(args).call("GET", f"/v1/batches/{args.batch_id}"), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    b = _api(args).call("POST", f"/v1/batches/{args.batch_id}/cancel")
    print(f"{b['id']}: {b['status']}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """The output (or ``--errors``: the error) file's lines, to stdout or ``-o``."""
    api = _api(args)
    b = api.call("GET", f"/v1/batches/{args.batch_id}")
    file_id = b["error_file_id" if args.errors else "output_file_id"]
    if file_id is None:
        which = "error" if args.errors else "output"
        print(f"{b['id']} ({b['status']}) has no {which} file", file=sys.stderr)
        return 1
    text = api.text(f"/v1/files/{file_id}/content")
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(f"{len(text.splitlines())} lines -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def add_batch_parser(sub: Any) -> None:
    batch = sub.add_parser("batch", help="batches on a running server (the OpenAI Batch API)")
    bsub = batch.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    common = server_args

    p = bsub.add_parser("create", help="upload a batch file and start the batch")
    p.add_argument("file", type=Path, help="JSONL, one {custom_id, method, url, body} per line")
    p.add_argument("--endpoint", required=True, choices=ENDPOINTS, help="every line's url")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="repeatable; webhook_url=URL asks for a signed webhook at the end")
    p.add_argument("--follow", action="store_true", help="show progress until the batch ends")
    common(p)
    p.set_defaults(func=cmd_create)
    p = bsub.add_parser("list", help="your batches, newest first")
    p.add_argument("--limit", type=int, default=20)
    common(p)
    p.set_defaults(func=cmd_list)
    for name, fn, what in (("show", cmd_show, "one batch as JSON"),
                           ("cancel", cmd_cancel, "cancel a batch (finished lines are kept)")):
        p = bsub.add_parser(name, help=what)
        p.add_argument("batch_id")
        common(p)
        p.set_defaults(func=fn)
    p = bsub.add_parser("results", help="a batch's output lines (--errors: its error lines)")
    p.add_argument("batch_id")
    p.add_argument("--errors", action="store_true")
    p.add_argument("-o", "--out", type=Path)
    common(p)
    p.set_defaults(func=cmd_results)
