"""Atomic writing of convtune's native JSONL."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from convtune.conversation import Conversation
from convtune.errors import ConvtuneError


def write_conversations(path: str | os.PathLike[str], conversations: Iterable[Conversation]) -> int:
    """Write one ``Conversation.model_dump(mode="json")`` per line; return the count.

    The data goes to a temporary file in the target's directory (same file system,
    so the rename is atomic), is fsynced, then renamed over ``path``. If the
    iterable raises midway - e.g. ``iter_conversations`` finding bad input - the
    temporary file is removed and ``path`` is left exactly as it was.
    """
    target = Path(path)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Keep an existing file's permissions; mkstemp's 0600 would surprise people.
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ConvtuneError(f"cannot write {target}: {exc.strerror or exc}") from exc
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for conversation in conversations:
                if not isinstance(conversation, Conversation):
                    raise TypeError(f"expected Conversation, got {type(conversation).__name__}")
                f.write(conversation.model_dump_json())
                f.write("\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ConvtuneError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    _fsync_directory(directory)
    return count


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Not possible everywhere (e.g. Windows), and
    # the data is already safe, so failures are ignored.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
