"""Uploaded training files: streamed to disk under a size limit, validated, PII-redacted.

Stored per tenant under a server-generated id (the user's file name is only
metadata)::

    $CONVTUNE_HOME/tenants/<tenant>/files/<file-id>/raw<suffix>      the upload as sent
    $CONVTUNE_HOME/tenants/<tenant>/files/<file-id>/processed.jsonl  validated + redacted

Accepted content (detected, the same readers as ``convtune data import``):

* convtune conversation JSONL with per-task ``labels`` -> ``kind: conversations``
  (a multi-task run on the labelled tasks);
* OpenAI chat JSONL (``{"messages": [...]}``), or conversations without labels
  -> ``kind: chat`` (the model learns the assistant/agent turns);
* CSV with a column mapping (form field ``mapping``, e.g. ``text=utterance``);
* preference JSONL (``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}``) -> ``kind: preference`` (for DPO).

Every problem is reported at once, each with its line and field; a file with
any problem gets ``status: error`` and its report in ``status_details``, and no
job can use it. Nothing unredacted is kept but the raw upload, which is
deleted once processed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from convtune.errors import ConvtuneError, DataValidationError, Problem
from convtune.jobs.db import JobsDB, new_id
from convtune.tenancy import check_tenant

PURPOSES = ("fine-tune", "batch")  # what a user uploads; the server also writes "batch_output" files

# Batch input files (OpenAI's Batch API): one request per line, validated whole on upload.
BATCH_URLS = ("/v1/conversations/analyze", "/v1/chat/completions", "/v1/embeddings")
BATCH_KEYS = ("custom_id", "method", "url", "body")
MAX_BATCH_LINES = 50_000

#: ``check(url, body) -> (problems as (field, message), body to store, extra keys to store)``:
#: the server's check of one batch line's body against its route (:func:`serve.batches.check_body`).
BatchCheck = Callable[[str, dict[str, Any]], tuple[list[tuple[str, str]], dict[str, Any], dict[str, Any]]]
_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".txt")
_CHUNK = 1 << 20


class FileTooLarge(ConvtuneError):
    def __init__(self, limit: int):
        super().__init__(f"the file is larger than the {limit:,}-byte upload limit")
        self.limit = limit


def file_dir(home: str | Path, tenant: str, file_id: str) -> Path:
    return Path(home) / "tenants" / check_tenant(tenant) / "files" / file_id


def processed_path(home: str | Path, tenant: str, file_id: str) -> Path:
    return file_dir(home, tenant, file_id) / "processed.jsonl"


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI file object (+ convtune's ``kind`` and ``records``)."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row["status_details"],
        "kind": row["kind"],
        "records": row["records"],
        # convtune: every problem of a file that failed validation, each with its line and field
        "problems": (row.get("info") or {}).get("problems") if row["status"] == "error" else None,
    }


def store_upload(
    db: JobsDB,
    home: str | Path,
    tenant: str,
    filename: str,
    purpose: str,
    src: BinaryIO,
    *,
    max_bytes: int,
    mapping: str | None = None,
    check_batch: BatchCheck | None = None,
) -> dict[str, Any]:
    """Save, validate, redact and register one upload; returns its file row (status processed or error).
    ``purpose="batch"``: a batch input file, each line's body checked by ``check_batch``."""
    file_id = new_id("file")
    folder = file_dir(home, tenant, file_id)
    folder.mkdir(parents=True)
    name = Path(filename or "upload.jsonl").name[:255] or "upload.jsonl"
    suffix = Path(name).suffix.lower()
    raw = folder / f"raw{suffix if suffix in _SUFFIXES else '.jsonl'}"
    size = 0
    try:
        with open(raw, "wb") as out:
            while chunk := src.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(max_bytes)
                out.write(chunk)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    row = {
        "id": file_id,
        "tenant": tenant,
        "filename": name,
        "purpose": purpose,
        "bytes": size,
        "created_at": int(time.time()),
        "status": "uploaded",
        "status_details": None,
    }
    db.add_file(row)
    try:
        if purpose == "batch":
            kind, fmt, records, info = _process_batch(raw, folder / "processed.jsonl", check_batch)
        else:
            kind, fmt, records, info = _process(raw, folder / "processed.jsonl", mapping)
    except DataValidationError as exc:
        details = exc.report().replace(str(raw), name).replace(raw.name, name)  # the user's file name
        problems = [{"line": p.line, "field": p.field, "message": p.message} for p in exc.problems]
        db.update_file(file_id, status="error", status_details=details, info={"problems": problems})
    except ConvtuneError as exc:  # undetectable format, bad mapping
        db.update_file(file_id, status="error", status_details=str(exc).replace(str(raw), name))
    else:
        db.update_file(file_id, status="processed", kind=kind, format=fmt, records=records, info=info)
    finally:
        raw.unlink(missing_ok=True)  # only the redacted copy is kept
    return db.get_file(tenant, file_id)


def _process(raw: Path, out: Path, mapping: str | None) -> tuple[str, str, int, dict[str, Any]]:
    if _looks_like_preferences(raw):
        n, counts = _process_preferences(raw, out)
        return "preference", "preference", n, {"redactions": dict(counts)}
    from convtune.data import import_file

    result, convs = import_file(raw, out, mapping=mapping)
    labelled = Counter(name for c in convs for name, v in c.labels.items() if v is not None)
    kind = "conversations" if labelled else "chat"
    if kind == "chat":
        bad = [
            Problem(raw.name, None, "turns", f"conversation {c.id!r} has no agent/assistant turn to learn")
            for c in convs
            if not any(t.role.value == "agent" for t in c.turns)
        ]
        if bad:
            out.unlink(missing_ok=True)
            raise DataValidationError(bad[:100], truncated=len(bad) > 100)
    info = {
        "redactions": dict(result.redactions),
        "tasks": dict(sorted(labelled.items())),
        "labels": _label_counts(convs, labelled),
        "turns": result.turns,
    }
    return kind, result.format, result.conversations, info


def _process_batch(raw: Path, out: Path, check: BatchCheck | None) -> tuple[str, str, int, dict[str, Any]]:
    """Validate a batch input file whole (every problem, with line and field) and write each
    request, as ``check`` returns it (PII redacted), with its line number."""
    problems: list[Problem] = []
    first: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    urls: Counter = Counter()

    def bad(number: int, field: str | None, message: str) -> None:
        problems.append(Problem(raw.name, number, field, message))

    with open(raw, "rb") as fh:
        for number, data in enumerate(fh, start=1):
            if len(problems) >= 1000:
                break
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                bad(number, None, "not UTF-8 text")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                bad(number, None, f"not valid JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                bad(number, None, "a request must be a JSON object {custom_id, method, url, body}")
                continue
            for key in BATCH_KEYS:
                if key not in obj:
                    bad(number, key, "field required")
            for key in sorted(set(obj) - set(BATCH_KEYS)):
                bad(number, key, "unknown field (a line holds custom_id, method, url and body)")
            cid, url, body = obj.get("custom_id"), obj.get("url"), obj.get("body")
            if "custom_id" in obj:
                if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
                    bad(number, "custom_id", "must be a string of 1-64 characters")
                elif cid in first:
                    bad(number, "custom_id", f"duplicate custom_id {cid!r} (first on line {first[cid]})")
                else:
                    first[cid] = number
            if "method" in obj and obj["method"] != "POST":
                bad(number, "method", "must be POST")
            if "url" in obj and url not in BATCH_URLS:
                bad(number, "url", f"must be one of {', '.join(BATCH_URLS)}")
            if "body" in obj and not isinstance(body, dict):
                bad(number, "body", "must be a JSON object (the request body of url)")
            elif url in BATCH_URLS and isinstance(body, dict) and check is not None:
                found, body, extra = check(url, body)
                for field, message in found:
                    bad(number, f"body.{field}" if field else "body", message)
                obj = {**obj, "body": body, **extra}
            if len(first) > MAX_BATCH_LINES:
                bad(number, None, f"more than {MAX_BATCH_LINES:,} requests in one batch")
                break
            urls[url] += 1
            records.append({**obj, "line": number})
    if not records and not problems:
        problems.append(Problem(raw.name, None, None, "the file holds no requests"))
    if problems:
        raise DataValidationError(problems[:1000], truncated=len(problems) >= 1000)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return "batch", "batch", len(records), {"urls": dict(urls)}


MAX_RECORDED_LABELS = 1000  # distinct labels of one task kept in a file's info (more: left to training)


def _label_counts(convs: list[Any], labelled: Counter) -> dict[str, dict[str, int]]:
    """Per classification task (intent): label -> conversations, so a job resolves its label sets
    from the file without reading it again (``convtune.training.taskset.resolve_label_sets``)."""
    from convtune.training import taskset
    from tasks.registry import default_registry

    names = [t.name for t in default_registry() if taskset.is_label_set_task(t) and t.name in labelled]
    seen = taskset.labels_in_data([(convs, None)], names)
    return {name: {lab: s.count for lab, s in sorted(by_label.items())}
            for name, by_label in seen.items() if len(by_label) <= MAX_RECORDED_LABELS}


# ---- preference files ----------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class _Input(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[_Message] = Field(min_length=1)


class _Preference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: _Input
    preferred_output: list[_Message] = Field(min_length=1, max_length=1)
    non_preferred_output: list[_Message] = Field(min_length=1, max_length=1)


def _looks_like_preferences(raw: Path) -> bool:
    with open(raw, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return False
                return isinstance(first, dict) and "preferred_output" in first
    return False


def _process_preferences(raw: Path, out: Path) -> tuple[int, Counter]:
    from convtune.pii import redact_text

    problems: list[Problem] = []
    records: list[dict[str, Any]] = []
    counts: Counter = Counter()
    with open(raw, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
                pref = _Preference.model_validate(obj)
            except UnicodeDecodeError:
                problems.append(Problem(raw.name, number, None, "not UTF-8 text"))
                continue
            except ValueError as exc:
                if isinstance(exc, ValidationError):
                    problems += [
                        Problem(raw.name, number, ".".join(map(str, e["loc"])), e["msg"])
                        for e in exc.errors()
                    ]
                else:
                    problems.append(Problem(raw.name, number, None, f"not valid JSON: {exc}"))
                continue
            if pref.input.messages[-1].role != "user":
                problems.append(Problem(raw.name, number, "input.messages", "must end with a user message"))
            for key in ("preferred_output", "non_preferred_output"):
                if getattr(pref, key)[0].role != "assistant":
                    problems.append(Problem(raw.name, number, f"{key}.0.role", "must be assistant"))
            if pref.preferred_output[0].content == pref.non_preferred_output[0].content:
                problems.append(
                    Problem(
                        raw.name,
                        number,
                        "non_preferred_output",
                        "identical to preferred_output: nothing to learn",
                    )
                )

            def clean(m: _Message) -> dict[str, str]:
                text, spans = redact_text(m.content)
                counts.update(s.entity for s in spans)
                return {"role": m.role, "content": text}

            records.append(
                {
                    "input": {"messages": [clean(m) for m in pref.input.messages]},
                    "preferred_output": [clean(pref.preferred_output[0])],
                    "non_preferred_output": [clean(pref.non_preferred_output[0])],
                }
            )
    if not records and not problems:
        problems.append(Problem(raw.name, None, None, "the file holds no records"))
    if problems:
        raise DataValidationError(problems[:1000], truncated=len(problems) > 1000)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(records), counts
