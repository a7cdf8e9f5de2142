"""The playground (``/playground``) in a real browser: Debian's headless Chromium driven by
Playwright's Python API (``executable_path`` points at the system browser; Playwright downloads
nothing), against ``convtune serve``'s app on the tiny model over real HTTP, with a job worker.

Every test blocks and records requests to any host but the server. Screenshots of each page
are written to ``$CONVTUNE_SCREENSHOTS`` (default ``.cache/playground-screenshots``; ``make
screenshots`` writes them to ``docs/playground/``). Without a Chromium these tests are skipped,
unless ``CONVTUNE_REQUIRE_BROWSER=1`` (``.ci/run`` sets it after installing one): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import EXAMPLES, ROOT
from .serve_helpers import make_run, make_server

BROWSER = os.environ.get("CONVTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not BROWSER:
    if os.environ.get("CONVTUNE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("CONVTUNE_REQUIRE_BROWSER=1 but no Chromium found (apt-get install chromium)")
    pytest.skip("no Chromium on this machine (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

SHOTS = Path(os.environ.get("CONVTUNE_SCREENSHOTS") or ROOT / ".cache" / "playground-screenshots")
# JavaScript fragments for Page.until: some element of a selector says "recorded"; a collection is listed
SAID = "((sel) => [...document.querySelectorAll(sel)].some(s => s.textContent.includes('recorded')))"
OPTION = "((name) => [...document.querySelectorAll('#coll-target option')].some(o => o.value === name))"
PROBE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
TRANSCRIPT = """Agent: Thank you for calling Northwind, this is Dana. How can I help?
Customer: Hi, I was charged twice for my order last week.
Agent: I'm sorry about that. Let me look at your account.
Customer: Thanks. It was order 5521, two charges of forty dollars.
Agent: I see both charges. I'll refund the duplicate today.
Customer: Great, thank you so much."""


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    import uvicorn

    from convtune.jobs.worker import Worker, WorkerSettings

    runs_root = tmp_path_factory.mktemp("playground-runs")
    runs = {name: make_run(tiny_model_dir, runs_root / name, seed)
            for name, seed in (("alpha", 1), ("beta", 2))}
    srv = make_server(tiny_model_dir, tmp_path_factory.mktemp("playground-home"), runs)
    srv.ctx.base_spec = str(tiny_model_dir)
    stop = threading.Event()
    worker = Worker(srv.ctx.jobs_db, srv.ctx.settings.home, WorkerSettings(poll_s=0.2, stale_s=60))
    worker_thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    worker_thread.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(srv.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_for(lambda: web.started, 60, "uvicorn to start")
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    web.should_exit = True
    thread.join(20)
    stop.set()
    worker_thread.join(60)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Page:
    """A fresh browser context on the playground; requests off the server are blocked and kept."""

    def __init__(self, browser, server):
        self.server = server
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        host = urlsplit(server.url).netloc

        def gate(route):
            url = route.request.url
            if urlsplit(url).netloc != host and not url.startswith(("data:", "blob:")):
                self.outside.append(url)
                return route.abort()
            return route.continue_()

        self.context.route("**/*", gate)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(f"{server.url}/playground/")

    def sign_in(self, key: str) -> None:
        self.page.fill("#api-key", key)
        self.page.press("#api-key", "Enter")
        self.page.wait_for_selector("#signed-in:not([hidden])")

    def until(self, js: str, timeout: float = 30_000) -> None:
        """Wait until the JavaScript expression ``js`` is true (a function: the CSP forbids eval)."""
        self.page.wait_for_function(f"() => {js}", timeout=timeout, polling=200)

    def status_has(self, text: str) -> None:
        self.until(f"document.getElementById('status').textContent.includes({json.dumps(text)})")

    def tab(self, name: str) -> None:
        self.page.click(f"#tab-{name}")

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        assert self.outside == [], f"the page requested other hosts: {self.outside}"
        self.context.close()


@pytest.fixture
def page(browser, server):
    p = Page(browser, server)
    yield p
    p.close()


def http(url: str, key: str | None = None, method: str = "GET", body: object = None):
    """(status, headers, text) of one request, errors included (stdlib only)."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def api(server, key: str, method: str, path: str, body: object = None):
    status, _, text = http(server.url + path, key, method, body)
    assert status < 400, text
    return json.loads(text)


# ---- loading, sign-in, keyboard ------------------------------------------------------------


def test_page_loads_with_a_strict_csp_and_nothing_from_other_hosts(server, page):
    status, headers, html = http(server.url + "/playground/")
    csp = headers["content-security-policy"]
    assert status == 200 and "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert http(server.url + "/playground/%2e%2e/routes/health.py")[0] == 404
    assert http(server.url + "/playground/app.js")[1]["content-type"].startswith("text/javascript")
    assert http(server.url + "/v1/models")[0] == 401  # the page is public, the API is not
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched elsewhere
    # no key yet: the page asks for one and has called nothing that needs it
    assert page.page.is_visible("#signin") and page.page.evaluate("sessionStorage.length") == 0
    page.shot("signin")
    assert page.console_errors == []


def test_sign_in_keeps_the_key_in_session_storage_only(server, page):
    page.page.fill("#api-key", "ct-wrong")
    page.page.press("#api-key", "Enter")
    page.status_has("Sign-in failed")
    assert page.page.evaluate("sessionStorage.length") == 0
    page.sign_in(server.acme)
    assert page.page.evaluate(f"sessionStorage.getItem('convtune.apiKey') === {json.dumps(server.acme)}")
    assert page.page.evaluate("localStorage.length") == 0 and server.acme not in page.page.url
    assert page.page.evaluate("document.cookie") == ""
    options = page.page.eval_on_selector_all("#chat-model option", "os => os.map(o => o.value)")
    assert options == ["tiny-base", "alpha", "beta"]  # the tenant's models, not another tenant's
    page.page.reload()  # same tab: still signed in
    page.page.wait_for_selector("#signed-in:not([hidden])")


def test_tabs_work_by_keyboard(server, page):
    page.sign_in(server.acme)
    page.page.focus("#tab-chat")
    page.page.keyboard.press("ArrowRight")
    assert page.page.evaluate("document.activeElement.id") == "tab-analyze"
    assert page.page.is_visible("#page-analyze") and not page.page.is_visible("#page-chat")
    page.page.keyboard.press("End")
    assert page.page.is_visible("#page-collections")
    page.page.keyboard.press("Home")
    assert page.page.is_visible("#page-chat")
    page.page.keyboard.press("Tab")  # into the page: the model picker is the next stop
    assert page.page.evaluate("document.activeElement.id") == "chat-model"


# ---- chat, feedback, compare ---------------------------------------------------------------


def test_streamed_chat_shows_usage_and_records_feedback(server, page):
    page.sign_in(server.acme)
    page.page.select_option("#chat-model", "alpha")
    page.page.fill("#chat-max-tokens", "12")
    # count how many times the answer grows: streamed tokens arrive one chunk at a time
    page.page.evaluate("""() => {
        window.__growth = 0;
        new MutationObserver(() => window.__growth++).observe(document.getElementById('chat-log'),
            {subtree: true, characterData: true, childList: true});
    }""")
    page.page.fill("#chat-input", "My card was charged twice. Can you help?")
    page.page.press("#chat-input", "Control+Enter")
    page.page.wait_for_selector("#chat-log li.assistant .feedback")
    answer = page.page.text_content("#chat-log li.assistant pre")
    meta = page.page.text_content("#chat-log li.assistant p.muted")
    assert answer and "completion tokens" in meta and "tokens/s" in meta
    assert page.page.evaluate("window.__growth") > 4  # several deltas, not one final write
    page.shot("chat")
    page.page.click("#chat-log li.assistant .feedback button[aria-label^='Thumbs up']")
    page.until(f"{SAID}('#chat-log .feedback [role=status]')")
    listed = api(server, server.acme, "GET", "/v1/feedback")["data"]
    assert listed[0]["type"] == "thumbs" and listed[0]["value"] is True and listed[0]["model"] == "alpha"
    assert listed[0]["answer"] == answer
    assert api(server, server.globex, "GET", "/v1/feedback")["data"] == []  # tenancy
    page.tab("feedback")
    page.page.wait_for_selector("#feedback-table tbody tr")
    page.shot("feedback")


def test_compare_runs_two_models_and_records_a_preference(server, page):
    page.sign_in(server.acme)
    page.tab("compare")
    page.page.select_option("#compare-a", "alpha")
    page.page.select_option("#compare-b", "beta")
    page.page.fill("#compare-max-tokens", "10")
    page.page.fill("#compare-input", "Summarise: the customer wants a refund.")
    page.page.click("#compare-run")
    page.until("document.getElementById('status').textContent === 'Both answered.'", timeout=60_000)
    a, b = page.page.text_content("#compare-a-out"), page.page.text_content("#compare-b-out")
    assert a and b and a != b  # two different adapters
    page.shot("compare")
    page.page.click("#compare-b-fb button")
    page.until(f"{SAID}('#compare-b-fb [role=status]')")
    prefs = [f for f in api(server, server.acme, "GET", "/v1/feedback")["data"] if f["type"] == "preference"]
    assert prefs and prefs[0]["model"] == "beta"
    exported = api(server, server.acme, "GET", "/v1/feedback/export")
    assert any(p["preferred_output"][0]["content"] == b for p in exported["preferences"])


# ---- analyze -------------------------------------------------------------------------------


def test_analyze_a_pasted_transcript_and_highlight_evidence_by_keyboard(server, page):
    page.sign_in(server.acme)
    page.tab("analyze")
    page.page.wait_for_selector("#analyze-tasks input[value='summary']")
    page.page.fill("#analyze-text", TRANSCRIPT)
    page.page.click("#analyze-run")
    page.page.wait_for_selector("#analyze-result:not([hidden])", timeout=120_000)
    tasks = page.page.eval_on_selector_all("#analyze-outputs .task h3",
                                           "hs => hs.map(h => h.firstChild.textContent)")
    assert tasks == ["summary", "action_items", "intent", "sentiment"]
    assert page.page.locator("#analyze-transcript li").count() == 6
    assert page.page.locator("#analyze-charts svg rect").count() >= 6 + 2  # timeline turns + speaker bars
    assert "PERSON" in page.page.text_content("#analyze-redactions")  # "Dana" was redacted first
    # the sentiment output rests on the customer's turns: select it by keyboard
    button = page.page.locator("#analyze-outputs .task:has(h3:text('sentiment')) button.evidence").first
    button.focus()
    page.page.keyboard.press("Enter")
    ids = button.get_attribute("data-ids").split()
    highlighted = page.page.eval_on_selector_all("#analyze-transcript li.hl",
                                                 "ls => ls.map(l => l.dataset.id)")
    assert ids and highlighted == ids and button.get_attribute("aria-pressed") == "true"
    page.shot("analyze")
    # feedback on one task's answer names the task
    page.page.get_by_role("button", name="Thumbs down for the intent answer").click()
    page.until(f"{SAID}('#analyze-outputs [role=status]')")
    fb = api(server, server.acme, "GET", "/v1/feedback")["data"][0]
    assert fb["task"] == "analyze" and fb["choice"] == "intent" and fb["value"] is False


def test_analyze_reads_an_uploaded_file_and_reports_bad_ones(server, page, tmp_path):
    page.sign_in(server.acme)
    page.tab("analyze")
    calls = tmp_path / "calls.jsonl"
    calls.write_text((EXAMPLES / "train.jsonl").read_text().splitlines()[0] + "\n")
    page.page.set_input_files("#analyze-file", str(calls))
    page.page.locator("#analyze-tasks input[value='summary']").uncheck()
    page.page.locator("#analyze-tasks input[value='action_items']").uncheck()
    page.page.click("#analyze-run")
    page.page.wait_for_selector("#analyze-result:not([hidden])", timeout=120_000)
    assert page.page.locator("#analyze-outputs .task").count() == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "c1", "turns": [{"id": "t1", "speaker": "A", "text": ""}]}\n')
    page.page.set_input_files("#analyze-file", str(bad))
    page.page.click("#analyze-run")
    page.until("document.getElementById('status').classList.contains('error')")
    assert "bad.jsonl:1" in page.page.text_content("#status")


# ---- untrusted text stays text -------------------------------------------------------------


def test_markup_in_answers_transcripts_and_documents_never_runs(server, page):
    page.sign_in(server.acme)

    def fake_stream(route):  # a model answer holding markup, in the server's SSE shape
        chunk = {"id": "chatcmpl-probe", "object": "chat.completion.chunk", "created": 0, "model": "alpha",
                 "choices": [{"index": 0, "delta": {"content": PROBE}, "finish_reason": None}]}
        done = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in (chunk, done)) + "data: [DONE]\n\n"
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)

    page.page.route("**/v1/chat/completions", fake_stream)
    page.page.fill("#chat-input", "hello")
    page.page.click("#chat-send")
    page.until("document.querySelector('#chat-log li.assistant pre').textContent.includes('onerror')")
    page.page.unroute("**/v1/chat/completions")
    assert page.page.text_content("#chat-log li.assistant pre") == PROBE  # shown as text
    # a transcript holding markup, through the real analyze route
    page.tab("analyze")
    page.page.wait_for_selector("#analyze-tasks input[value='intent']")
    for name in ("summary", "action_items", "sentiment"):
        page.page.locator(f"#analyze-tasks input[value='{name}']").uncheck()
    page.page.fill("#analyze-text", f"Agent: Hello, how can I help?\nCustomer: {PROBE} I need a refund.")
    page.page.click("#analyze-run")
    page.page.wait_for_selector("#analyze-result:not([hidden])", timeout=120_000)
    assert "onerror" in page.page.text_content("#analyze-transcript")
    # a document holding markup, added and found through the real collection routes
    page.tab("collections")
    page.page.fill("#coll-name", "kb")
    page.page.press("#coll-name", "Enter")
    page.until(f"{OPTION}('kb')")
    page.page.fill("#doc-text", f"Refund policy. {PROBE} Refunds take five days.")
    page.page.click("#doc-add")
    page.status_has("added")
    page.page.fill("#search-query", "refund policy")
    page.page.click("#search-run")
    page.page.wait_for_selector("#search-hits li")
    assert "onerror" in page.page.text_content("#search-hits")
    page.shot("collections")
    # nothing ran, and no element was made from the text
    assert page.page.evaluate("window.__pwned") is None and page.dialogs == []
    assert page.page.locator("main img, main script").count() == 0


# ---- collections and grounded chat ---------------------------------------------------------


def test_grounded_chat_shows_the_chunks_it_was_given(server, page):
    api(server, server.acme, "POST", "/v1/collections", body={"name": "policies"})
    api(server, server.acme, "POST", "/v1/collections/policies/documents", body={"documents": [
        {"id": "refunds", "text": "Duplicate charges are refunded within five business days.",
         "metadata": {"tags": ["billing"]}}]})
    page.sign_in(server.acme)
    page.tab("collections")
    page.until(f"{OPTION}('policies')")
    page.page.select_option("#coll-target", "policies")
    page.page.fill("#search-query", "duplicate charge")
    page.page.fill("#search-tags", "billing")
    page.page.click("#search-run")
    page.page.wait_for_selector("#search-hits li")
    assert "five business days" in page.page.text_content("#search-hits")
    page.tab("chat")
    page.page.select_option("#chat-collection", "policies")
    page.page.fill("#chat-max-tokens", "8")
    page.page.fill("#chat-input", "How long do refunds for duplicate charges take?")
    page.page.click("#chat-send")
    page.page.wait_for_selector("#chat-log details.grounding")
    assert "five business days" in page.page.text_content("#chat-log details.grounding")


# ---- tune: file -> job -> served model -----------------------------------------------------


def test_upload_validate_tune_watch_the_loss_and_try_the_model(server, page, tmp_path):
    page.sign_in(server.acme)
    page.tab("tune")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"id": "c1", "turns": []}\nnot json\n')
    page.page.set_input_files("#tune-file", str(bad))
    page.page.click("#tune-upload")
    page.page.wait_for_selector("#tune-report table.problems")
    rows = page.page.eval_on_selector_all("#tune-report tbody tr", "rs => rs.map(r => r.innerText)")
    assert len(rows) >= 2 and any(r.startswith("2") for r in rows)  # every problem, with its line
    assert page.page.is_disabled("#tune-start")
    good = tmp_path / "calls.jsonl"
    good.write_text("\n".join((EXAMPLES / "train.jsonl").read_text().splitlines()[:3]) + "\n")
    page.page.set_input_files("#tune-file", str(good))
    page.page.click("#tune-upload")
    page.page.wait_for_selector("#tune-report p.ok")
    page.page.fill("#tune-steps", "3")
    page.page.fill("#tune-save", "3")
    page.page.fill("#tune-suffix", "web")
    page.page.click("#tune-start")
    page.page.wait_for_selector("#tune-job:not([hidden])")
    page.until("document.getElementById('tune-job-status').textContent.startsWith('succeeded')",
               timeout=300_000)
    job_id = page.page.text_content("#tune-job-id")
    events = api(server, server.acme, "GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=100")["data"]
    losses = [e for e in events if e["type"] == "metrics" and "train_loss" in e["data"]]
    assert losses and page.page.locator("#loss-chart circle.point").count() == len(losses)
    assert all(e["data"]["estimated_finish"] >= e["created_at"] - 1 for e in losses)
    assert "tokens trained" in page.page.text_content("#tune-job-eta")
    page.page.wait_for_selector("#tune-checkpoints li")
    job = api(server, server.acme, "GET", f"/v1/fine_tuning/jobs/{job_id}")
    fields = [r["field"] for r in job["validation"]["validation"]]  # the per-task predictor table
    assert fields and page.page.eval_on_selector_all("#tune-validation tbody tr td:first-child",
                                                     "ds => ds.map(d => d.textContent)") == fields
    page.shot("tune")
    ft = f"ft:tiny-base:acme:web:{job_id}"
    final = page.page.locator("#tune-checkpoints li", has_text=ft + " ")
    final.get_by_role("button", name="Try in chat").first.click()
    page.page.wait_for_selector("#page-chat:not([hidden])")
    assert page.page.input_value("#chat-model") == ft
    page.page.fill("#chat-max-tokens", "6")
    page.page.fill("#chat-input", "Hello")
    page.page.click("#chat-send")
    page.page.wait_for_selector("#chat-log li.assistant .feedback")
    assert page.page.text_content("#chat-log li.assistant .who") == ft
