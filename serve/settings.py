"""Server settings: one typed object, built by a function, injected into the app.

    settings = load_settings(flags={"port": 8000}, env=os.environ)
    app = create_app(settings)

Precedence: defaults < ``CONVTUNE_SERVE_<FIELD>`` environment variables <
explicit flags (``convtune serve --max-batch-size 8``). Every problem is
reported at once, before any model loads. No module-level settings object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from convtune.errors import ConfigError

ENV_PREFIX = "CONVTUNE_SERVE_"
DEFAULT_MODEL = "smollm2-135m-instruct"  # == convtune.models.DEFAULT_MODEL (not imported: stays light)


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(description="convtune home: keys, tenants' models, collections (CONVTUNE_HOME)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (each loads the model)")
    base_model: str = Field(DEFAULT_MODEL, min_length=1, description="the one base model in memory")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    fast_cpu: bool = Field(True, description="on CPU, decode with 4- or 8-bit weights (inference.quantize)")
    cpu_weights: Literal["int4", "int8"] = Field("int4", description="the fast CPU path's weight scheme")
    load_models: bool = Field(True, description="load the model at startup (False: no generation routes)")
    # capacity
    max_concurrent_requests: int = Field(128, ge=1, description="in flight (running + waiting); more -> 429")
    max_batch_size: int = Field(16, ge=1, le=256, description="sequences decoded together")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="wait for more requests before a batch")
    max_loaded_adapters: int = Field(8, ge=1, description="LoRA adapters kept in memory (LRU)")
    request_timeout_s: float = Field(300.0, gt=0, description="per-request deadline (queue + generation)")
    drain_timeout_s: float = Field(30.0, ge=0, description="on shutdown, wait this long for requests")
    # request limits
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_tokens_limit: int = Field(1024, ge=1, description="upper bound of max_tokens / max_new_tokens")
    default_max_tokens: int = Field(256, ge=1)
    max_n: int = Field(8, ge=1, le=64)
    max_stop: int = Field(4, ge=0, le=16)
    max_stop_chars: int = Field(50, ge=1)
    max_messages: int = Field(256, ge=1)
    embed_max_inputs: int = Field(2048, ge=1)
    embed_max_input_tokens: int = Field(8192, ge=1)
    embed_max_total_tokens: int = Field(300_000, ge=1)
    retrieval_max_k: int = Field(16, ge=1)
    # fine-tuning jobs
    database_url: str | None = Field(
        None, description="jobs/files metadata: sqlite:///... (default: HOME/jobs.sqlite) or postgresql+psycopg://..."
    )
    files_max_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest training-file upload")
    worker: bool = Field(True, description="convtune serve also starts a job worker (convtune worker)")
    jobs_per_tenant: int = Field(1, ge=1, description="running fine-tuning jobs per tenant")
    # batches (OpenAI's Batch API, serve.batches)
    batch_runner: bool = Field(True, description="this server processes batches (serve.batches.BatchRunner)")
    batch_concurrency: int = Field(16, ge=1, le=256, description="batch lines in the engine at once")
    batch_line_timeout_s: float = Field(3600.0, gt=0, description="deadline of a batch line (waits for chat)")
    batch_poll_s: float = Field(1.0, gt=0, le=60, description="how often an idle runner looks for a batch")
    batch_stale_s: float = Field(30.0, gt=0, description="a batch whose runner's heartbeat is older is taken")
    webhook_allow: str = Field("127.0.0.1,localhost,::1", description=(
        "comma-separated hosts batch webhooks may be sent to (default: loopback only)"))
    webhook_url: str | None = Field(None, max_length=2000,
                                    description="webhook of batches without metadata.webhook_url")
    feedback_retention_days: float = Field(
        30.0, ge=0, description="keep returned generations (redacted) this long for feedback (0: never)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) must be <= max_tokens_limit "
                f"({self.max_tokens_limit})"
            )
        return self

    @property
    def db_path(self) -> Path:
        return self.home / "server.sqlite"

    @property
    def jobs_url(self) -> str:
        from convtune.jobs.db import default_url

        return self.database_url or default_url(self.home)


def load_settings(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from ``env`` (default: ``os.environ``) and ``flags``; ConfigError lists every problem."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    fields = ServerSettings.model_fields
    for name in fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    if "home" not in values:
        values["home"] = env.get("CONVTUNE_HOME") or Path.home() / ".cache" / "convtune"
    unknown = sorted(k for k in (flags or {}) if k not in fields)
    if unknown:
        raise ConfigError(f"unknown server setting(s): {', '.join(unknown)}")
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return ServerSettings.model_validate(values)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid server settings: " + "; ".join(problems)) from None
