"""``convtune serve``: validate settings, start a job worker, run uvicorn on the app factory."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
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
    worker = _start_worker(settings) if settings.worker else None
    print(f"convtune playground: {playground_url(settings.host, settings.port)} "
          "(sign in with a tenant's API key: convtune keys create --tenant NAME)", flush=True)
    try:
        _serve(uvicorn, settings)
    finally:
        if worker is not None:
            worker.terminate()  # running jobs checkpoint and go back to the queue
            try:
                worker.wait(150)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def playground_url(host: str, port: int) -> str:
    """The page's address as a person on this machine opens it (a wildcard bind is localhost)."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/playground/"


def _start_worker(settings: Any) -> subprocess.Popen:
    """One job worker per ``convtune serve`` (not per uvicorn worker process)."""
    cmd = [sys.executable, "-m", "convtune.cli", "worker", "--database-url", settings.jobs_url,
           "--jobs-per-tenant", str(settings.jobs_per_tenant)]
    from convtune.jobs.worker import die_with_parent

    return subprocess.Popen(cmd, env={**os.environ, "CONVTUNE_HOME": str(settings.home)},
                            preexec_fn=die_with_parent)


def _serve(uvicorn: Any, settings: Any) -> None:
    uvicorn.run(
        "serve.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        log_level="info",
    )
