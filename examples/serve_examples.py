"""Run the README's serving examples exactly as written (the `make demo` serving step and a test).

The README's ``bash`` blocks between ``<!-- serve-example -->`` markers are run
as one script in ``--cwd`` (default: the repository), with ``$CONVTUNE_HOME``
and ``CONVTUNE_SERVE_*`` taken from the environment. The script starts
``convtune serve`` in the background; it is stopped at the end whatever
happens. Prints each command's output; exit code 0 when every command succeeded.

    python examples/serve_examples.py [--cwd DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- serve-example -->\s*```bash\n(.*?)```", re.S)


def readme_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    blocks = BLOCK.findall(readme.read_text(encoding="utf-8"))
    if not blocks:
        raise SystemExit(f"no serve-example blocks in {readme}")
    return blocks


def script() -> str:
    body = "\n".join(readme_blocks())
    # stop the background server however the script ends; fail on the first failing command
    return "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + body


def run(cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", script()], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cwd", type=Path, default=ROOT)
    args = ap.parse_args()
    res = run(args.cwd)
    print(res.stdout)
    if res.returncode:
        print(res.stderr[-3000:], file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
