"""Hostile text is a 400 naming the field, never a 500, and the client's connection survives.

Over real HTTP (uvicorn, one keep-alive connection): every operation in ``/openapi.json``
gets a lone surrogate, a NUL and an escape character in each of its text fields.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from convtune.text import first_text_problem, text_problem

from .serve_helpers import make_server

HOSTILE = ["\ud800", "a\x00b", "\x1b[31mred"]


def test_text_problem_names_the_character_and_where():
    assert text_problem("plain text\twith tabs\nand lines\r\n, accents é, emoji 😀, U+2028 \u2028") is None
    assert text_problem("ab\ud800") == "lone surrogate U+D800 at character 2 (not valid Unicode text)"
    assert text_problem("a\x00") == "control character U+0000 at character 1"
    assert first_text_problem({"messages": [{"role": "user", "content": "x\x1b"}]})[0] == "messages.0.content"
    assert first_text_problem({"k\x00": 1})[0] == "k\x00"
    assert first_text_problem({"a": [1, 2.5, None, True, "fine"]}) is None


def test_a_conversation_with_unstorable_text_is_refused_naming_the_field():
    from pydantic import ValidationError

    from convtune.conversation import Conversation

    with pytest.raises(ValidationError, match=r"turns\.0\.text: control character U\+0000"):
        Conversation.model_validate({"id": "c", "turns": [{"id": "t1", "speaker": "A", "text": "hi\x00"}]})


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    import uvicorn
    from fastapi.testclient import TestClient

    srv = make_server(tiny_model_dir, tmp_path_factory.mktemp("hostile-home"), {})
    with TestClient(srv.app):  # starts the engine (the lifespan runs once)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(srv.app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        until = time.monotonic() + 30
        while not server.started and time.monotonic() < until:
            time.sleep(0.05)
        srv.url = f"http://127.0.0.1:{port}"
        yield srv
        server.should_exit = True
        thread.join(10)


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        node = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, spec).get("type") != "null"]
            return _resolve(options[0], spec) if options else {}
    return schema


def _sample(schema: dict, spec: dict, text: str, depth: int = 0) -> object:
    """A value of ``schema`` with ``text`` in every string field (enums keep a valid value)."""
    schema = _resolve(schema, spec)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "string":
        return text
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return [_sample(schema.get("items", {}), spec, text, depth + 1)] if depth < 6 else []
    if kind == "object" or "properties" in schema:
        if depth >= 6:
            return {}
        return {k: _sample(v, spec, text, depth + 1) for k, v in schema.get("properties", {}).items()}
    return text


class Connection:
    """One keep-alive HTTP/1.1 connection (http.client): a dropped connection fails the next call."""

    def __init__(self, url: str, key: str):
        from http.client import HTTPConnection
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.key = key

    def request(self, method: str, path: str, *, params: dict | None = None, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, dict]:
        from urllib.parse import urlencode

        headers = {"Authorization": f"Bearer {self.key}"}
        if content_type:
            headers["Content-Type"] = content_type
        url = path + ("?" + urlencode(params, encoding="utf-8", errors="surrogatepass") if params else "")
        self.conn.request(method.upper(), url, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, {"raw": data[:200]}


def multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = "convtune-fuzz-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.jsonl"\r\n'
                 "Content-Type: application/jsonl\r\n\r\n".encode()
                 + file + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_every_operation_answers_hostile_text_without_a_5xx_on_one_connection(live):
    client = Connection(live.url, live.acme)
    status, spec = client.request("get", "/openapi.json")
    assert status == 200
    tried = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            url = path.replace("{", "").replace("}", "")  # path parameters: their own names
            body = op.get("requestBody", {}).get("content", {})
            for text in HOSTILE:
                params = {p["name"]: text for p in op.get("parameters", [])
                          if p.get("in") == "query" and _resolve(p.get("schema", {}), spec).get("type")
                          in ("string", None)}
                if "application/json" in body:
                    payload = json.dumps(_sample(body["application/json"]["schema"], spec, text)).encode()
                    status, answer = client.request(method, url, params=params, body=payload,
                                                    content_type="application/json")
                elif "multipart/form-data" in body:
                    line = json.dumps({"id": "c1", "turns": [{"id": "t1", "speaker": text, "text": text}]})
                    payload, kind = multipart({"purpose": "fine-tune"}, line.encode() + b"\n")
                    status, answer = client.request(method, url, params=params, body=payload,
                                                    content_type=kind)
                else:
                    status, answer = client.request(method, url, params=params)
                tried += 1
                assert status < 500, (method, path, repr(text), answer)
                assert client.request("get", "/live")[0] == 200  # the same connection still works
    assert tried > 30
    chat = {"model": "tiny-base", "messages": [{"role": "user", "content": "hi \ud800"}]}
    status, answer = client.request("post", "/v1/chat/completions", body=json.dumps(chat).encode(),
                                    content_type="application/json")
    assert status == 400 and answer["error"]["param"] == "messages.0.content"
    assert answer["error"]["code"] == "invalid_text" and "U+D800" in answer["error"]["message"]


def test_tokenizing_a_prompt_does_not_block_the_event_loop(live, monkeypatch):
    """While a chat request's prompt is being tokenized, other requests are still answered."""
    renderer = live.ctx.host.renderer
    started, release = threading.Event(), threading.Event()
    slow_encode = renderer.encode_chat

    def encode_chat(*args, **kwargs):
        started.set()
        assert release.wait(20), "the probe below never got through"
        return slow_encode(*args, **kwargs)

    monkeypatch.setattr(renderer, "encode_chat", encode_chat)
    chat = {"model": "tiny-base", "max_tokens": 2, "messages": [{"role": "user", "content": "hello " * 2000}]}
    got: dict = {}

    def send() -> None:
        got["chat"] = Connection(live.url, live.acme).request(
            "post", "/v1/chat/completions", body=json.dumps(chat).encode(), content_type="application/json")

    sender = threading.Thread(target=send)
    sender.start()
    assert started.wait(20)
    probe = Connection(live.url, live.acme)
    probe.conn.timeout = 10
    assert probe.request("get", "/v1/models")[0] == 200  # answered while the prompt is still "tokenizing"
    release.set()
    sender.join(60)
    assert got["chat"][0] == 200, got["chat"]
