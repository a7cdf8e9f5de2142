"""Text that Python can hold but a tokenizer, database or file cannot.

JSON lets a client send a lone surrogate (``"\\ud800"``) or a NUL; Python keeps them
in a ``str``, and then a tokenizer raises ``TypeError``, UTF-8 encoding fails on
write, PostgreSQL refuses the row. convtune refuses such text where it comes in (the
server's request bodies and query strings, conversation turns in any file), naming
the field and the character, instead of failing somewhere deep inside.

Refused: lone surrogates (U+D800-U+DFFF) and control characters (Unicode category
``Cc``) other than tab, line feed and carriage return.
"""

from __future__ import annotations

import re
from typing import Any

#: C0 controls but tab, LF, CR; DEL and the C1 controls; the surrogate range.
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """What is wrong with ``text`` (its first refused character and where), or None."""
    m = _REFUSED.search(text)
    if m is None:
        return None
    code = ord(m.group())
    if 0xD800 <= code <= 0xDFFF:
        return f"lone surrogate U+{code:04X} at character {m.start()} (not valid Unicode text)"
    return f"control character U+{code:04X} at character {m.start()}"


def first_text_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string in a parsed JSON value (keys included) that :func:`text_problem`
    refuses, as ``(dotted path, problem)``; None when all are fine."""
    if isinstance(value, str):
        problem = text_problem(value)
        return (path or "body", problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and (problem := text_problem(key)):
                return where, f"key: {problem}"
            if found := first_text_problem(item, where):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := first_text_problem(item, f"{path}.{i}" if path else str(i)):
                return found
    return None
