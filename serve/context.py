"""What every route reads: one :class:`ServerContext` per app, on ``app.state.ctx``.

Settings, key and model stores, the model host and engine, the embedding encoder,
metrics, the jobs database. :func:`build_context` makes one from settings (loading
the base model); tests build theirs on a tiny model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from convtune.tenancy import KeyStore, ModelStore
from serve.engine import Engine
from serve.errors import APIError
from serve.metrics import Metrics
from serve.models import ModelHost
from serve.settings import ServerSettings


@dataclass
class ServerContext:
    settings: ServerSettings
    keys: KeyStore
    models: ModelStore
    metrics: Metrics = field(default_factory=Metrics)
    host: ModelHost | None = None
    engine: Engine | None = None
    encoder: Any = None  # embeddings.encoder.Encoder, loaded on first use
    ready: bool = False
    base_spec: str = ""  # what job processes load as the base model (default: settings.base_model)
    _jobs_db: Any = None
    batch_runner: Any = None  # serve.batches.BatchRunner, while the server runs one
    scorers: dict[str, Any] = field(default_factory=dict)  # reward models loaded for best_of (engine thread)
    _encoder_lock: threading.Lock = field(default_factory=threading.Lock)
    _db_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def jobs_db(self) -> Any:
        """The files/jobs metadata database (convtune.jobs.db.JobsDB), opened on first use."""
        with self._db_lock:  # opened once, also when the batch runner and a route ask at once
            if self._jobs_db is None:
                from convtune.jobs.db import JobsDB

                self._jobs_db = JobsDB(self.settings.jobs_url)
        return self._jobs_db

    def get_encoder(self) -> Any:
        with self._encoder_lock:
            if self.encoder is None:
                from embeddings.encoder import Encoder

                self.encoder = Encoder()
            return self.encoder

    def require_engine(self) -> tuple[ModelHost, Engine]:
        if self.host is None or self.engine is None:
            raise APIError(503, "no generation model is loaded on this server", code="model_not_loaded")
        return self.host, self.engine


def build_context(settings: ServerSettings, *, model: Any = None, tokenizer: Any = None) -> ServerContext:
    """Stores, model host and engine for ``settings`` (loads the base model unless given one)."""
    ctx = ServerContext(settings, KeyStore(settings.db_path), ModelStore(settings.home),
                        base_spec=settings.base_model)
    if settings.load_models:
        if model is None:
            from convtune.models import load_model

            model, tokenizer = load_model(settings.base_model, device=settings.device)
            if settings.fast_cpu:  # a no-op off CPU
                from convtune.inference.quantize import quantize_for_cpu

                model = quantize_for_cpu(model, settings.cpu_weights)
        ctx.host = ModelHost(
            model, tokenizer, settings.base_model, ctx.models, max_adapters=settings.max_loaded_adapters
        )
        ctx.engine = Engine(
            ctx.host,
            max_batch_size=settings.max_batch_size,
            max_inflight=settings.max_concurrent_requests,
            batch_wait_ms=settings.batch_wait_ms,
            on_batch=ctx.metrics.batch_rows.observe,
        )
    return ctx
