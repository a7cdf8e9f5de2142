"""`convtune serve` as a user runs it: the README's serving examples, verbatim, against a tiny model."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

from .conftest import ROOT
from .serve_helpers import make_run

pytest.importorskip("openai")
sys.path.insert(0, str(ROOT / "examples"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_readme_serving_examples_run_verbatim(tiny_model_dir, tmp_path, monkeypatch):
    import serve_examples

    make_run(tiny_model_dir, tmp_path / "runs" / "demo" / "train", seed=3)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = serve_examples.script()
    port = 8000
    if not _port_free(port):  # someone else's server: same commands on a free port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = script.replace("localhost:8000", f"localhost:{port}").replace(
            "--port 8000", f"--port {port}"
        )
    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONVTUNE_SERVE_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("CONVTUNE_URL", f"http://localhost:{port}")
    monkeypatch.setattr(serve_examples, "script", lambda: script)
    res = serve_examples.run(tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    decode = json.JSONDecoder().raw_decode  # curl prints no newline after a body
    chat, _ = decode(res.stdout, res.stdout.index('{"id":"chatcmpl-'))
    assert chat["model"] == "support-v1" and chat["choices"][0]["message"]["role"] == "assistant"
    analysis, _ = decode(res.stdout, res.stdout.index('{"id":"analysis-'))
    assert set(analysis["tasks"]) == {"summary", "action_items", "intent", "sentiment"}
    assert analysis["analytics"]["speakers"] and analysis["messages"][0]["id"] == "t1"
    assert "'support-v1'" in res.stdout and "2 embeddings of 384 dimensions" in res.stdout
    assert _port_free(port)  # the server was stopped
    assert not os.environ.get("CONVTUNE_API_KEY")
