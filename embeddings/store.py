"""Where collections live: ``$CONVTUNE_HOME/collections/<tenant>/<name>/``.

Tenant and collection names are validated identifiers, never paths, so no
caller (CLI user or API request) can reach outside the tenant's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convtune.errors import ConfigError
from convtune.tenancy import check_name


def collections_root(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    from convtune.models import convtune_home

    return convtune_home() / "collections"


def collection_dir(name: str, tenant: str = "default", root: str | Path | None = None) -> Path:
    return collections_root(root) / check_name("tenant", tenant) / check_name("collection", name)


def list_collections(tenant: str = "default", root: str | Path | None = None) -> list[str]:
    folder = collections_root(root) / check_name("tenant", tenant)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "docs.sqlite").is_file())


def open_collection(name: str, tenant: str = "default", *, encoder: Any = None,
                    root: str | Path | None = None, create: bool = True) -> Any:
    """Open (or create) a tenant's collection with ``encoder`` (default: the packaged MiniLM)."""
    from embeddings.encoder import Encoder
    from embeddings.index import Collection

    folder = collection_dir(name, tenant, root)
    if not create and not (folder / "docs.sqlite").is_file():
        known = ", ".join(list_collections(tenant, root)) or "none"
        raise ConfigError(f"no collection {name!r} for tenant {tenant!r} (collections: {known})")
    return Collection(folder, encoder if encoder is not None else Encoder())
