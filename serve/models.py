"""One base model in memory, many tenants' LoRA adapters on it, loaded lazily and evicted LRU.

Model ids a tenant can name: the base model's name (shared by every tenant)
and the names of the tenant's registered models (``convtune models add``).
An adapter is loaded into the one PEFT model under an internal alias
(``a0``, ``a1``, ...); a batch names each row's alias (PEFT's mixed-adapter
batches), the base model's rows ``__base__``. Everything here runs on the
engine thread, except :meth:`ModelHost.resolve` (a file lookup).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convtune.renderer import Renderer
from convtune.tenancy import ModelStore
from serve.errors import APIError, not_found

log = logging.getLogger("convtune.serve")

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class ModelRef:
    """What a request's ``model`` resolved to, within the caller's tenant."""

    id: str
    adapter_key: str | None  # "<tenant>/<name>" for an adapter, None for the base model
    path: Path | None  # the registered run directory
    tenant: str | None
    best_of: tuple[int, str] | None = None  # the model's registered best-of-n default: (n, reward model)


@dataclass
class LoadedAdapter:
    alias: str
    renderer: Renderer
    task_names: list[str]
    few_shot: dict[str, Any] | None
    path: Path
    predictors: Any = None  # the run's label-task predictors (convtune.predictors); encoder loads lazily


class ModelHost:
    """The base model, its tokenizer and renderer, and the adapters currently in memory."""

    def __init__(self, model: Any, tokenizer: Any, base_name: str, store: ModelStore, *, max_adapters: int):
        self.base_model = model
        self.model = model  # becomes a PeftModel when the first adapter loads
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.renderer = Renderer(tokenizer)
        self.store = store
        self.max_adapters = max_adapters
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()  # key -> adapter, LRU order
        self._next_alias = 0
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)

    # ---- lookup (any thread) ---------------------------------------------------------------

    def resolve(self, tenant: str, model_id: str) -> ModelRef:
        """The caller's model: the base model or one of the tenant's; anything else is 404."""
        if model_id == self.base_name:
            return ModelRef(model_id, None, None, None)
        found = self.store.get(tenant, model_id)
        if found is None:
            raise not_found("model", model_id, param="model")
        from rlhf.reward import is_reward_model

        if is_reward_model(found.path):
            raise APIError(
                400,
                f"model {model_id!r} is a reward model: it scores answers "
                "(best_of.reward_model), it does not generate",
                param="model",
                code="not_a_generator",
            )
        best_of = (found.best_of["n"], found.best_of["reward_model"]) if found.best_of else None
        return ModelRef(model_id, f"{tenant}/{model_id}", found.path, tenant, best_of)

    def list(self, tenant: str) -> list[dict[str, Any]]:
        base = {
            "id": self.base_name,
            "object": "model",
            "created": 0,
            "owned_by": "convtune",
            "root": self.base_name,
            "parent": None,
        }
        out = [base]
        for m in self.store.list(tenant):
            out.append(
                {
                    "id": m.name,
                    "object": "model",
                    "created": m.created_at,
                    "owned_by": tenant,
                    "root": self.base_name,
                    "parent": self.base_name,
                }
            )
        return out

    # ---- adapters (engine thread) -----------------------------------------------------------

    def ensure(self, refs: list[ModelRef]) -> dict[str | None, str]:
        """Load every adapter ``refs`` need (evicting least recently used ones not needed now);
        returns adapter key -> alias (None -> ``__base__``)."""
        needed = {r.adapter_key: r for r in refs if r.adapter_key is not None}
        if len(needed) > self.max_adapters:
            raise APIError(
                503,
                "too many different adapters in one batch",
                code="adapter_capacity",
                headers={"Retry-After": "1"},
            )
        aliases: dict[str | None, str] = {None: BASE}
        for key, ref in needed.items():
            if key in self.loaded:
                self.loaded.move_to_end(key)
            else:
                while len(self.loaded) >= self.max_adapters:
                    victim = next(k for k in self.loaded if k not in needed)
                    self._unload(victim)
                self._load(key, ref)
            aliases[key] = self.loaded[key].alias
        return aliases

    def adapter(self, key: str) -> LoadedAdapter:
        return self.loaded[key]

    def _check_base(self, ref: ModelRef) -> None:
        """An adapter only fits the base model it was trained on (same name, same folder, or
        the same weights converted twice: equal config and weight file sizes)."""
        from convtune.models import resolve_model

        assert ref.path is not None
        trained_on = json.loads((ref.path / "config.json").read_text()).get("model", {}).get("name", "")
        loaded_from = getattr(self.base_model, "name_or_path", "") or self.base_name
        if trained_on in (self.base_name, loaded_from):
            return
        try:
            a, b = Path(resolve_model(trained_on)).resolve(), Path(resolve_model(loaded_from)).resolve()
            same = a == b or _fingerprint(a) == _fingerprint(b)
        except Exception:  # an unknown/unavailable base: cannot be this one
            same = False
        if not same:
            raise APIError(
                409,
                f"model {ref.id!r} was trained on {trained_on!r}; this server serves {self.base_name!r}",
                param="model",
                code="base_model_mismatch",
            )

    def _load(self, key: str, ref: ModelRef) -> None:
        from peft import PeftModel

        assert ref.path is not None
        self._check_base(ref)
        info = json.loads((ref.path / "tasks.json").read_text())
        alias = f"a{self._next_alias}"
        self._next_alias += 1
        with warnings.catch_warnings():  # PEFT reads a property transformers 5.x renamed
            warnings.filterwarnings("ignore", category=FutureWarning)
            if self.model is self.base_model:
                self.model = PeftModel.from_pretrained(
                    self.base_model, ref.path / "adapter", adapter_name=alias
                )
            else:
                self.model.load_adapter(ref.path / "adapter", adapter_name=alias)
        self.model.eval()
        renderer = Renderer.from_settings(self.tokenizer, info["renderer"])
        from convtune.predictors import load_predictors

        self.loaded[key] = LoadedAdapter(
            alias, renderer, [t["name"] for t in info["tasks"]], info.get("few_shot"), ref.path,
            load_predictors(ref.path),
        )
        log.info("adapter %s loaded as %s (%d in memory)", key, alias, len(self.loaded))

    def _unload(self, key: str) -> None:
        gone = self.loaded.pop(key)
        self.model.delete_adapter(gone.alias)
        log.info("adapter %s evicted (%d in memory)", key, len(self.loaded))

    @contextlib.contextmanager
    def active(self, ref: ModelRef) -> Iterator[Any]:
        """The model with ``ref``'s adapter active (or every adapter disabled), for exclusive jobs."""
        key = ref.adapter_key
        if key is None:
            if self.model is self.base_model:
                yield self.model
            else:
                with self.model.disable_adapter():
                    yield self.model
            return
        self.ensure([ref])
        self.model.set_adapter(self.loaded[key].alias)
        yield self.model

    def renderer_for(self, ref: ModelRef) -> Renderer:
        """The renderer ``ref``'s prompts are built with. Safe from any thread: one lookup (an
        adapter evicted by the engine meanwhile is read from its run directory instead)."""
        if ref.adapter_key is None:
            return self.renderer
        loaded = self.loaded.get(ref.adapter_key)
        return loaded.renderer if loaded is not None else self._peek(ref)

    def _peek(self, ref: ModelRef) -> Renderer:
        """A not-yet-loaded adapter's renderer, read from its run directory."""
        assert ref.path is not None
        info = json.loads((ref.path / "tasks.json").read_text())
        return Renderer.from_settings(self.tokenizer, info["renderer"])


def _fingerprint(folder: Path) -> tuple[bytes, tuple[int, ...]]:
    weights = sorted(folder.glob("*.safetensors"))
    return (folder / "config.json").read_bytes(), tuple(w.stat().st_size for w in weights)
