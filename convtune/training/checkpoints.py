"""Checkpoints that are either complete or ignored.

The Trainer writes ``checkpoints/checkpoint-<step>/`` (adapter, optimizer,
scheduler, RNG and trainer state). Only after that save has returned does
convtune write :data:`MARKER` into the folder, atomically (temp file + rename).
A folder without the marker was interrupted mid-write (SIGKILL, power loss)
and is never resumed from; it is deleted when a run resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

MARKER = "convtune-complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_step(path: Path) -> int | None:
    m = _CKPT.match(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def list_checkpoints(folder: Path) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every checkpoint folder, oldest first."""
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        step = checkpoint_step(p)
        if step is not None:
            out.append((step, p, (p / MARKER).is_file()))
    return sorted(out)


def mark_complete(path: Path, info: dict[str, Any]) -> None:
    write_json_atomic(path / MARKER, {"complete": True, **info})


def read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def newest_complete(folder: Path) -> Path | None:
    done = [p for _, p, complete in list_checkpoints(folder) if complete]
    return done[-1] if done else None


def remove_incomplete(folder: Path) -> list[Path]:
    """Delete half-written checkpoints; returns what was removed."""
    removed = []
    for _, p, complete in list_checkpoints(folder):
        if not complete:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rotate(folder: Path, keep: int, *, protect: Path | None = None) -> None:
    """Keep the ``keep`` newest complete checkpoints (and ``protect``); delete older complete ones
    and every incomplete one older than the newest complete checkpoint."""
    items = list_checkpoints(folder)
    complete = [p for _, p, c in items if c]
    keep_set = set(complete[-keep:]) | ({protect} if protect else set())
    newest_done = complete[-1] if complete else None
    newest_step = checkpoint_step(newest_done) if newest_done else -1
    for step, p, c in items:
        if p in keep_set:
            continue
        if c or step < newest_step:
            shutil.rmtree(p, ignore_errors=True)
