"""Tenants: API keys and each tenant's registered models, under ``$CONVTUNE_HOME``.

API keys: ``ct-`` + 43 random url-safe characters, shown once at creation. Only
the key's SHA-256 is stored (the lookup index); the stored digest is compared
with :func:`hmac.compare_digest`; keys are never logged. ``convtune keys
create --tenant acme`` makes one; the server checks them.

Models: a tenant's tuned adapters are training run directories copied to
``tenants/<tenant>/models/<name>/`` (``convtune models add RUN_DIR --tenant
acme --name support-v1``). Names are identifiers, never paths, so no request
can reach outside its tenant's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convtune.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")  # ':' for ft:<base>:<tenant>:<suffix>:<job>

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    digest TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    tenant TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""


def check_name(kind: str, name: str) -> str:
    """A tenant, model or collection name: an identifier, never a path."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ConfigError(
            f"{kind} name {name!r}: use 1-200 letters, digits, '_', '-', '.' or ':', starting with a "
            "letter or digit"
        )
    return name


BEST_OF_N = (2, 16)  # the answers best-of-n may sample (a model's default and a request's)

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_tenant(name: str) -> str:
    """A tenant name: 1-64 letters, digits, '_', '-' or '.' (no ':', which model ids use)."""
    if not isinstance(name, str) or not _TENANT.match(name) or ".." in name:
        raise ConfigError(f"tenant name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a "
                          "letter or digit")
    return name


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    prefix: str
    tenant: str
    created_at: int
    revoked: bool


class KeyStore:
    """API keys in SQLite (``server.sqlite``); one short-lived connection per call (thread-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def create(self, tenant: str) -> str:
        """A new key for ``tenant``; the only time the key itself is seen."""
        key = "ct-" + secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute(
                "INSERT INTO api_keys (digest, prefix, tenant, created_at) VALUES (?, ?, ?, ?)",
                (_digest(key), key[:10], check_tenant(tenant), int(time.time())),
            )
        return key

    def tenant_of(self, key: str | None) -> str | None:
        """The tenant owning ``key`` (None: unknown or revoked)."""
        if not key:
            return None
        digest = _digest(key)
        with self._db() as db:
            row = db.execute(
                "SELECT digest, tenant FROM api_keys WHERE digest = ? AND revoked = 0", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return row[1]

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        with self._db() as db:
            rows = db.execute(
                "SELECT prefix, tenant, created_at, revoked FROM api_keys "
                + ("WHERE tenant = ? " if tenant else "")
                + "ORDER BY created_at",
                (tenant,) if tenant else (),
            ).fetchall()
        return [KeyInfo(p, t, c, bool(r)) for p, t, c, r in rows]

    def revoke(self, prefix: str) -> int:
        if len(prefix) < 6:
            raise ConfigError("give at least the first 6 characters of the key")
        with self._db() as db:
            return db.execute(
                "UPDATE api_keys SET revoked = 1 WHERE prefix LIKE ? AND revoked = 0", (prefix[:10] + "%",)
            ).rowcount


# ---- registered models ----------------------------------------------------------------------


@dataclass(frozen=True)
class TenantModel:
    name: str
    tenant: str
    path: Path  # a finished training run directory
    created_at: int
    base_model: str
    best_of: dict[str, Any] | None = None  # {"n", "reward_model"}: chat answers default to best-of-n


class ModelStore:
    """A tenant's servable adapters: ``<home>/tenants/<tenant>/models/<name>/`` run directories."""

    def __init__(self, home: str | Path):
        self.root = Path(home) / "tenants"

    def _dir(self, tenant: str, name: str) -> Path:
        return self.root / check_tenant(tenant) / "models" / check_name("model", name)

    def add(self, tenant: str, name: str, run_dir: str | Path, *, replace: bool = False,
            best_of: dict[str, Any] | None = None) -> TenantModel:
        """Copy a finished run into the tenant's models (atomically: temp folder, then rename).

        ``best_of`` (``{"n": BEST_OF_N, "reward_model": <one of the tenant's models>}``): the model's chat
        completions default to best-of-n with that reward model (the caller checks it is one)."""
        run = Path(run_dir)
        if best_of is not None:
            n, rm = best_of.get("n"), best_of.get("reward_model")
            lo, hi = BEST_OF_N
            if set(best_of) != {"n", "reward_model"} or not isinstance(n, int) or not lo <= n <= hi:
                raise ConfigError(f"best_of needs n ({lo}-{hi}) and reward_model")
            check_name("model", str(rm))
            if self.get(tenant, str(rm)) is None:
                raise ConfigError(f"tenant {tenant!r} has no model {rm!r} (register the reward model first)")
        missing = [f for f in ("adapter", "tokenizer", "config.json", "tasks.json") if not (run / f).exists()]
        if missing:
            raise ConfigError(f"{run} is not a finished training run (missing: {', '.join(missing)})")
        dest = self._dir(tenant, name)
        if dest.exists() and not replace:
            raise ConfigError(f"tenant {tenant!r} already has a model {name!r} (replace it with --replace)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run, tmp, ignore=shutil.ignore_patterns("checkpoints", "eval"))
        info = {"created_at": int(time.time()), "source": str(run), "best_of": best_of}
        (tmp / "registered.json").write_text(json.dumps(info))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        return self.get(tenant, name)

    def get(self, tenant: str, name: str) -> TenantModel | None:
        try:
            path = self._dir(tenant, name)
        except ConfigError:
            return None
        if not (path / "registered.json").is_file():
            return None
        info = json.loads((path / "registered.json").read_text())
        base = json.loads((path / "config.json").read_text()).get("model", {}).get("name", "")
        return TenantModel(name, tenant, path, int(info.get("created_at", 0)), str(base), info.get("best_of"))

    def list(self, tenant: str) -> list[TenantModel]:
        folder = self.root / check_tenant(tenant) / "models"
        if not folder.is_dir():
            return []
        found = (self.get(tenant, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith("."))
        return [m for m in found if m is not None]

    def remove(self, tenant: str, name: str) -> bool:
        path = self._dir(tenant, name)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True
