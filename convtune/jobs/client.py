"""``convtune jobs create|list|show|events|cancel``: the fine-tuning API from the command line.

Talks to a running server (``--url``, default ``$CONVTUNE_URL`` or
http://localhost:8000) with ``$CONVTUNE_API_KEY``, over plain HTTP (stdlib
only). ``create`` uploads the file, creates the job and follows it with a
progress bar fed by the job's events until it ends (``--no-follow`` returns
at once); Ctrl-C stops following, not the job.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from convtune.errors import ConvtuneError

FINISHED = ("succeeded", "failed", "cancelled")


class Api:
    def __init__(self, url: str, key: str | None):
        if not key:
            raise ConvtuneError("set CONVTUNE_API_KEY (convtune keys create --tenant NAME) or pass --api-key")
        self.url = url.rstrip("/")
        self.key = key

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                where = f" ({err['param']})" if err.get("param") else ""
                raise ConvtuneError(f"{exc.code}{where}: {err['message']}") from None
            except (ValueError, KeyError, TypeError):
                raise ConvtuneError(f"{exc.code}: {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ConvtuneError(
                f"cannot reach {self.url}: {exc.reason} (is `convtune serve` running?)"
            ) from None

    def text(self, path: str) -> str:
        """A GET whose answer is not JSON (a file's content)."""
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise ConvtuneError(f"{exc.code}: {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ConvtuneError(
                f"cannot reach {self.url}: {exc.reason} (is `convtune serve` running?)"
            ) from None

    def upload(self, path: Path, mapping: str | None, purpose: str = "fine-tune") -> dict[str, Any]:
        boundary = uuid.uuid4().hex
        fields = [("purpose", purpose)] + ([("mapping", mapping)] if mapping else [])
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields
        ]
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        data = b"".join(parts) + head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return self.call(
            "POST", "/v1/files", data=data, content_type=f"multipart/form-data; boundary={boundary}"
        )


def _api(args: argparse.Namespace) -> Api:
    return Api(
        args.url or os.environ.get("CONVTUNE_URL", "http://localhost:8000"),
        args.api_key or os.environ.get("CONVTUNE_API_KEY"),
    )


def cmd_create(args: argparse.Namespace) -> int:
    api = _api(args)
    f = api.upload(args.file, args.mapping)
    if f["status"] != "processed":
        print(f"upload {f['id']}: {f['status']}\n{f['status_details']}", file=sys.stderr)
        return 1
    print(f"uploaded {args.file} -> {f['id']} ({f['records']} {f['kind']} records)", file=sys.stderr)
    hp: dict[str, Any] = {}
    for key in ("n_epochs", "max_steps", "save_every", "learning_rate_multiplier"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    body = {
        "model": args.model,
        "training_file": f["id"],
        "suffix": args.suffix,
        "seed": args.seed,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }
    if args.model is None:
        body["model"] = api.call("GET", "/v1/models")["data"][0]["id"]  # the base model is listed first
    job = api.call("POST", "/v1/fine_tuning/jobs", body)
    print(job["id"])
    return follow(api, job["id"]) if args.follow else 0


def follow(api: Api, job_id: str, poll_s: float = 2.0) -> int:
    """Show the job's progress until it ends; 0 if it succeeded."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=job_id[-8:], unit="step", file=sys.stderr, dynamic_ncols=True)
    seen: set[str] = set()
    try:
        while True:
            events = api.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=100")["data"]
            for ev in reversed(events):
                if ev["id"] in seen:
                    continue
                seen.add(ev["id"])
                data = ev.get("data") or {}
                if ev["type"] == "metrics" and "step" in data:
                    bar.total = data.get("total_steps") or bar.total
                    bar.n = data["step"]
                    bar.set_postfix(loss=data.get("train_loss"), tok_s=data.get("tokens_per_second"))
                    bar.refresh()
                else:
                    bar.write(f"{ev['level']}: {ev['message']}")
            job = api.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
            if job["status"] in FINISHED:
                bar.close()
                print(
                    f"{job['status']}: {job['fine_tuned_model'] or (job['error'] or {}).get('message', '')}",
                    file=sys.stderr,
                )
                return 0 if job["status"] == "succeeded" else 1
            time.sleep(poll_s)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped following; the job goes on (convtune jobs show {job_id})", file=sys.stderr)
        return 130


def cmd_list(args: argparse.Namespace) -> int:
    page = _api(args).call("GET", f"/v1/fine_tuning/jobs?limit={args.limit}")
    for j in page["data"]:
        print(f"{j['id']}  {j['status']:<16} {j['fine_tuned_model'] or '-'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(_api(args).call("GET", f"/v1/fine_tuning/jobs/{args.job_id}"), indent=2))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.follow:
        return follow(api, args.job_id)
    for ev in reversed(
        api.call("GET", f"/v1/fine_tuning/jobs/{args.job_id}/events?limit={args.limit}")["data"]
    ):
        print(
            f"{time.strftime('%H:%M:%S', time.localtime(ev['created_at']))} {ev['level']:<5} {ev['message']}"
        )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _api(args).call("POST", f"/v1/fine_tuning/jobs/{args.job_id}/cancel")
    print(f"{job['id']}: {job['status']}")
    return 0


def server_args(p: argparse.ArgumentParser) -> None:
    """The flags every command talking to a running server takes."""
    p.add_argument("--url", help="server (default: $CONVTUNE_URL or http://localhost:8000)")
    p.add_argument("--api-key", help="default: $CONVTUNE_API_KEY")


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="fine-tuning jobs on a running server (the OpenAI fine-tuning API)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    common = server_args

    p = jsub.add_parser("create", help="upload a training file, start a job, follow it")
    p.add_argument("file", type=Path, help="conversations (with labels), OpenAI chat JSONL or CSV")
    p.add_argument("--model", help="base model id (default: the server's)")
    p.add_argument("--suffix")
    p.add_argument("--seed", type=int)
    p.add_argument("--mapping", help="CSV column mapping, e.g. text=utterance,speaker=role")
    p.add_argument("--n-epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--learning-rate-multiplier", type=float)
    p.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress until the job ends (default)",
    )
    common(p)
    p.set_defaults(func=cmd_create)
    p = jsub.add_parser("list", help="your jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    common(p)
    p.set_defaults(func=cmd_list)
    p = jsub.add_parser("show", help="one job as JSON")
    p.add_argument("job_id")
    common(p)
    p.set_defaults(func=cmd_show)
    p = jsub.add_parser("events", help="a job's events (--follow: progress bar until it ends)")
    p.add_argument("job_id")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--follow", action="store_true")
    common(p)
    p.set_defaults(func=cmd_events)
    p = jsub.add_parser("cancel", help="cancel a job (a running one checkpoints, then stops)")
    p.add_argument("job_id")
    common(p)
    p.set_defaults(func=cmd_cancel)
