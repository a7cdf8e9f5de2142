"""``convtune serve``: validate settings, then run uvicorn on the app factory."""

from __future__ import annotations

import logging
import os
from typing import Any

from serve.settings import ENV_PREFIX, load_settings


def run(flags: dict[str, Any]) -> int:
    settings = load_settings(flags)  # every problem reported before anything loads
    import uvicorn

    # Worker processes rebuild the settings from the environment: pass the flags down.
    for key, value in flags.items():
        os.environ[ENV_PREFIX + key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    os.environ.setdefault("CONVTUNE_HOME", str(settings.home))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        "serve.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        log_level="info",
    )
    return 0
