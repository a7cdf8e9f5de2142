"""Domain exceptions. Raised inside the library; translated once at the edges.

The CLI turns a :class:`ConvtuneError` into one line on stderr and a non-zero
exit code; the server (later) maps it to the OpenAI error shape. Nothing below
the edges prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass


class ConvtuneError(Exception):
    """Base class for errors caused by user input or environment, not bugs."""


class ConfigError(ConvtuneError):
    """A configuration value is missing or invalid."""


class ModelNotFoundError(ConvtuneError):
    """A model name could not be resolved to weights on this machine."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, located as precisely as we can."""

    file: str
    line: int | None  # 1-based line (JSONL/transcripts) or row (CSV, header = row 1)
    field: str | None  # dotted path such as "turns.3.text"
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f" [{self.field}]"
        return f"{where}: {self.message}"


class DataValidationError(ConvtuneError):
    """Input data failed validation. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem], *, truncated: bool = False):
        self.problems = list(problems)
        self.truncated = truncated
        n = len(self.problems)
        more = " (report truncated)" if truncated else ""
        super().__init__(f"{n} problem{'s' if n != 1 else ''} found{more}")

    def report(self) -> str:
        """Human-readable multi-line report, one problem per line."""
        lines = [str(self)] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)
