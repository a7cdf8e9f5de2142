"""Guess a file's format from its name and, when that is not enough, its first bytes."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from convtune.errors import ConvtuneError
from convtune.ingest._common import FORMATS
from convtune.ingest.transcript import match_turn

_SAMPLE_BYTES = 64 * 1024  # enough for the first records; never the whole file
_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".txt": "transcript", ".transcript": "transcript"}
_SYMBL_KEYS = re.compile(r'"(payload|contentType|startTime|conversationId)"\s*:')


def detect_format(path: str | os.PathLike[str]) -> str:
    """One of FORMATS, or a ConvtuneError saying why we can't tell."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    # "calls.openai.jsonl": the user has already told us.
    if len(suffixes) >= 2 and suffixes[-2].lstrip(".") in FORMATS:
        return suffixes[-2].lstrip(".")
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    sample = _sample(p)
    found = _sniff_json_lines(sample)
    if found is None and sample.lstrip().startswith("{") and _SYMBL_KEYS.search(sample):
        found = "symbl"  # a pretty-printed document: its first line alone is not JSON
    if found is None and suffix not in (".json", ".jsonl", ".ndjson"):
        first = next((line.strip() for line in sample.splitlines() if line.strip()), "")
        found = "transcript" if match_turn(first) else None
    if found is None:
        raise _unsure(p, "its content matches none of them")
    return found


def _sample(path: Path) -> str:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # Sniffing a pipe would consume the data we are about to import.
            raise _unsure(path, "it is not a regular file, so its content cannot be sniffed")
        with open(path, "rb") as f:
            raw = f.read(_SAMPLE_BYTES)
    except OSError as exc:
        raise ConvtuneError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) == _SAMPLE_BYTES:
        raw = raw[:raw.rfind(b"\n") + 1] or raw  # drop the cut-off last line
    return raw.decode("utf-8", "replace").removeprefix("\ufeff")


def _sniff_json_lines(sample: str) -> str | None:
    """The format of the first JSONL record that parses, if any."""
    for line in sample.splitlines()[:50]:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if "turns" in obj:
            return "convtune"
        messages = obj.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            first = messages[0]
            if "payload" in first or "from" in first:
                return "symbl"
            if "role" in first:
                return "openai"
    return None


def _unsure(path: Path, why: str) -> ConvtuneError:
    return ConvtuneError(f"cannot tell the format of {path}: {why}; pass --format with one of "
                         f"{', '.join(FORMATS)}")
