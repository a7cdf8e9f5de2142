"""The import direction of convtune's layers, checked on the source (no imports run).

Rank of a module = its layer; a module may import project modules of its own
rank or below. Nothing outside ``serve`` imports ``serve``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("convtune", "tasks", "embeddings", "rlhf", "serve")

# Most specific prefix wins. Core (rank 0) is everything in convtune not listed.
RANKS: dict[str, int] = {
    "convtune": 0,  # data model, renderer, ingestion, PII, analytics, model loading
    "tasks": 1,
    "embeddings": 1,
    "convtune.training": 2,
    "convtune.evaluation": 2,
    "convtune.predictors": 2,  # per-task predictors (encoder head, k-NN, ensemble) chosen on validation
    "rlhf": 3,
    "convtune.jobs": 3,  # files, job queue, worker, job runner (trains via convtune.training)
    "convtune.cli": 4,
    "convtune.server_cli": 4,  # keys, models, serve (hands serve its flags by module name)
    "serve": 5,
}


def rank(module: str) -> int:
    best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len)
    return RANKS[best]


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def imported_project_modules(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def test_every_module_is_checked_and_imports_point_down():
    mods = project_modules()
    assert len(mods) >= 10, "module discovery broke"
    violations = []
    for module, path in sorted(mods.items()):
        for target in imported_project_modules(path, module):
            if target.split(".")[0] == "serve" and not module.startswith("serve"):
                violations.append(f"{module} imports the server ({target})")
            elif rank(target) > rank(module):
                violations.append(f"{module} (rank {rank(module)}) imports {target} (rank {rank(target)})")
    assert not violations, "\n".join(violations)


def test_rank_table_examples():
    assert rank("convtune.conversation") == 0
    assert rank("convtune.cli") == 4
    assert rank("convtune.training.sft") == 2
    assert rank("serve.app") == 5


def test_every_package_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("__init__.py")
    }
    assert on_disk == listed


def test_nothing_in_the_server_imports_the_app_factory():
    """serve.app assembles routes and middlewares; shared state lives in serve.context, so no
    route or helper needs the app (an import cycle hidden inside a function, before)."""
    mods = project_modules()
    importers = [m for m, path in mods.items() if m not in ("serve.app", "serve.cli")
                 and "serve.app" in imported_project_modules(path, m)]
    assert not importers, importers
