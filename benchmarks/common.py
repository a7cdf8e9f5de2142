"""What every benchmark script shares: a description of the machine and the JSON result file."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def machine(threads: int | None = None) -> dict[str, Any]:
    """The machine a result was measured on (results are only comparable within one machine)."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": threads if threads is not None else torch.get_num_threads()}


def write_result(out: Path, payload: dict[str, Any]) -> int:
    """Write ``payload`` as indented JSON to ``out`` (creating folders), say so, return exit code 0."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
