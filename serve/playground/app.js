// convtune playground: one page over the public API (the same calls any client makes).
//
// Rules this file keeps:
// - Untrusted text (model output, transcripts, documents, file names, errors) only ever reaches
//   the page through textContent / createTextNode (the `el` helper); nothing here sets innerHTML.
// - The API key lives in sessionStorage only and travels in the Authorization header.
// - Every request goes to this server (relative URLs); the CSP forbids anything else anyway.
"use strict";

const KEY = "convtune.apiKey";
const EMBEDDING_MODEL = "all-minilm-l6-v2";

// ---- small helpers --------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes (never markup). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function status(message, isError = false) {
  const s = $("status");
  s.textContent = message || "";
  s.classList.toggle("error", Boolean(isError));
}

function busy(button, on) {
  button.disabled = on;
  button.setAttribute("aria-busy", on ? "true" : "false");
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param;
  }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

/** JSON API call; throws ApiError with the server's message. */
async function api(path, { method = "GET", body, form } = {}) {
  const init = { method, headers: headers(), credentials: "omit", cache: "no-store" };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** POST a streamed chat completion; calls onDelta(text) per token chunk, returns the summary. */
async function streamChat(body, onDelta) {
  const started = performance.now();
  const r = await fetch("/v1/chat/completions", {
    method: "POST", credentials: "omit", cache: "no-store",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch { /* not JSON */ }
    throw new ApiError(r.status, data);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", id = null, usage = null, grounding = null, first = null, finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new ApiError(500, chunk);
        id = chunk.id || id;
        if (chunk.grounding) grounding = chunk.grounding;
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            if (first === null) first = performance.now();
            onDelta(choice.delta.content);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  const end = performance.now();
  const decodeS = first === null ? 0 : (end - first) / 1000;
  const tokens = usage ? usage.completion_tokens : 0;
  return {
    id, usage, grounding, finish,
    seconds: (end - started) / 1000,
    tokensPerSecond: tokens > 1 && decodeS > 0 ? (tokens - 1) / decodeS : null,
  };
}

function fmtTime(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "";
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function guarded(button, fn) {
  busy(button, true);
  try {
    await fn();
  } catch (err) {
    status(err.message, true);
  } finally {
    busy(button, false);
  }
}

// ---- sign-in and tabs -----------------------------------------------------------------------

const state = { models: [], collections: [], tasks: [], job: null, poll: null };

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await refreshModels();
  } catch (err) {
    sessionStorage.removeItem(KEY);
    throw err;
  }
  $("signin").hidden = true;
  $("signed-in").hidden = false;
  $("tenant-line").textContent = `Signed in with key ${key.slice(0, 7)}…`;
  document.body.classList.add("authed");
  status("Signed in.");
  await Promise.allSettled([refreshCollections(), loadTasks(), refreshJobs(), refreshFeedback()]);
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

function setupTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  const show = (tab, focus = true) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
  };
  for (const [i, tab] of tabs.entries()) {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (e) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -i, End: tabs.length - 1 - i };
      if (e.key in moves) {
        e.preventDefault();
        show(tabs[(i + moves[e.key] + tabs.length) % tabs.length]);
      }
    });
  }
  return (name) => show($(`tab-${name}`), false);
}

// ---- shared lists (models, collections, tasks) ----------------------------------------------

async function refreshModels() {
  const data = await api("/v1/models");
  state.models = data.data.filter((m) => m.id !== EMBEDDING_MODEL);
  for (const select of document.querySelectorAll(".model-select")) {
    const keep = select.value;
    const models = select.classList.contains("base-only") ? state.models.filter((m) => !m.parent) : state.models;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
    if (models.some((m) => m.id === keep)) select.value = keep;
  }
  const b = $("compare-b");
  if (!b.dataset.touched && state.models.length > 1) b.value = state.models[state.models.length - 1].id;
}

async function refreshCollections() {
  const data = await api("/v1/collections");
  state.collections = data.data.map((c) => c.name);
  const chat = $("chat-collection"), keepChat = chat.value;
  chat.replaceChildren(el("option", { value: "" }, "(none)"), ...state.collections.map((n) => el("option", { value: n }, n)));
  chat.value = state.collections.includes(keepChat) ? keepChat : "";
  const target = $("coll-target"), keepTarget = target.value;
  target.replaceChildren(...state.collections.map((n) => el("option", { value: n }, n)));
  if (state.collections.includes(keepTarget)) target.value = keepTarget;
  $("coll-list").replaceChildren(...data.data.map((c) =>
    el("li", {}, el("strong", {}, c.name), " ",
      el("button", { type: "button", class: "secondary small", "aria-label": `Delete collection ${c.name}`,
        onclick: () => deleteCollection(c.name) }, "Delete"))));
}

async function deleteCollection(name) {
  try {
    await api(`/v1/collections/${encodeURIComponent(name)}`, { method: "DELETE" });
    status(`Deleted collection ${name}.`);
    await refreshCollections();
  } catch (err) { status(err.message, true); }
}

async function loadTasks() {
  const data = await api("/v1/conversations/tasks");
  state.tasks = data.data;
  const box = $("analyze-tasks");
  box.replaceChildren(el("legend", {}, "Tasks"), ...data.data.map((t) =>
    el("label", { class: "check", title: t.instruction },
      el("input", { type: "checkbox", value: t.name, checked: t.core, name: "task" }), ` ${t.name}`)));
}

// ---- feedback widget (chat and analyze answers) ---------------------------------------------

/** Thumbs, a 1-5 rating and a correction for one answer (POST /v1/feedback). */
function feedbackWidget(responseId, choice, label) {
  const note = el("span", { class: "muted", role: "status" });
  const send = async (type, value) => {
    try {
      await api("/v1/feedback", { method: "POST", body: { response_id: responseId, choice, type, value } });
      note.textContent = `Thanks: ${type} recorded.`;
      refreshFeedback().catch(() => {});
    } catch (err) { note.textContent = err.message; }
  };
  const rating = el("select", { "aria-label": `Rate ${label} from 1 to 5` },
    el("option", { value: "" }, "Rate…"), ...[1, 2, 3, 4, 5].map((n) => el("option", { value: n }, `${n}`)));
  rating.addEventListener("change", () => rating.value && send("rating", Number(rating.value)));
  const correction = el("textarea", { rows: 2, "aria-label": `Correction for ${label}`, placeholder: "What it should have said" });
  return el("div", { class: "feedback" },
    el("button", { type: "button", class: "small", "aria-label": `Thumbs up for ${label}`, onclick: () => send("thumbs", true) }, "▲ Good"),
    el("button", { type: "button", class: "small", "aria-label": `Thumbs down for ${label}`, onclick: () => send("thumbs", false) }, "▼ Bad"),
    rating,
    el("details", {}, el("summary", {}, "Correct it"), correction,
      el("button", { type: "button", class: "small", onclick: () => correction.value.trim() && send("correction", correction.value) }, "Send correction")),
    note);
}

// ---- chat -----------------------------------------------------------------------------------

let chatHistory = [];

function chatBody(messages, maxTokensId, modelId) {
  const body = {
    model: $(modelId).value,
    messages,
    temperature: Number($("chat-temperature").value || 0),
    max_tokens: Number($(maxTokensId).value || 128),
  };
  return body;
}

async function sendChat(e) {
  e.preventDefault();
  const input = $("chat-input"), text = input.value.trim();
  if (!text) return;
  const system = $("chat-system").value.trim();
  chatHistory.push({ role: "user", content: text });
  const messages = system ? [{ role: "system", content: system }, ...chatHistory] : [...chatHistory];
  const body = chatBody(messages, "chat-max-tokens", "chat-model");
  if ($("chat-json").checked) body.response_format = { type: "json_object" };
  if ($("chat-collection").value) body.retrieval = { collection: $("chat-collection").value, k: 4 };
  const log = $("chat-log");
  log.append(el("li", { class: "user" }, el("span", { class: "who" }, "You"), el("pre", {}, text)));
  const answer = el("pre", { class: "answer", "aria-live": "polite" });
  const meta = el("p", { class: "muted" });
  const item = el("li", { class: "assistant" }, el("span", { class: "who" }, body.model), answer, meta);
  log.append(item);
  input.value = "";
  const button = $("chat-send");
  busy(button, true);
  try {
    const out = await streamChat(body, (delta) => { answer.textContent += delta; item.scrollIntoView({ block: "end" }); });
    chatHistory.push({ role: "assistant", content: answer.textContent });
    const u = out.usage || {};
    meta.textContent = `${u.prompt_tokens ?? "?"} prompt + ${u.completion_tokens ?? "?"} completion tokens · ` +
      (out.tokensPerSecond ? `${out.tokensPerSecond.toFixed(1)} tokens/s · ` : "") + `${out.seconds.toFixed(1)} s · ${out.finish || ""}`;
    if (out.grounding) {
      item.append(el("details", { class: "grounding" },
        el("summary", {}, `Grounded on ${out.grounding.length} chunk(s)`),
        el("ol", {}, ...out.grounding.map((c) => el("li", {}, el("span", { class: "muted" }, c.source || ""), el("pre", {}, c.text))))));
    }
    if (out.id) item.append(feedbackWidget(out.id, 0, "this answer"));
    status("");
  } catch (err) {
    chatHistory.pop();
    answer.textContent = "";
    meta.textContent = err.message;
    meta.classList.add("error");
    status(err.message, true);
  } finally {
    busy(button, false);
  }
}

// ---- analyze --------------------------------------------------------------------------------

async function readTranscript() {
  const file = $("analyze-file").files[0];
  const text = file ? await file.text() : $("analyze-text").value;
  if (!text.trim()) throw new Error("Paste a transcript or choose a file first.");
  const parsed = await api("/v1/conversations/parse", {
    method: "POST", body: { text, filename: file ? file.name : "pasted" },
  });
  if (!parsed.data.length) throw new Error("The transcript holds no conversation.");
  return parsed;
}

function speakerChart(analytics) {
  const rows = analytics.speakers;
  const width = 420, bar = 22, gap = 8, left = 110;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${rows.length * (bar + gap) + 10}`, role: "img",
    "aria-label": "Talk share per speaker", class: "chart" });
  rows.forEach((s, i) => {
    const y = 5 + i * (bar + gap);
    const w = Math.max(1, (width - left - 60) * s.talk_share);
    chart.append(
      svg("text", { x: 0, y: y + bar * 0.7, class: "label" }, s.speaker.slice(0, 16)),
      svg("rect", { x: left, y, width: w, height: bar, class: `bar role-${s.role}` }),
      svg("text", { x: left + w + 6, y: y + bar * 0.7, class: "label" }, `${Math.round(s.talk_share * 100)}%`));
  });
  return chart;
}

function timeline(messages, analytics) {
  // turn times: from the request when timed, else spread by word count (as the analytics estimate)
  const width = 420, height = 20 * Math.max(1, analytics.speakers.length) + 20;
  const speakers = analytics.speakers.map((s) => s.speaker);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Timeline of turns", class: "chart" });
  let t = 0;
  const spans = messages.map((m) => {
    const words = m.text.split(/\s+/).filter(Boolean).length;
    const start = m.start ?? t, end = m.end ?? start + words / ((analytics.assumed_words_per_minute || 150) / 60);
    t = end;
    return { speaker: m.speaker, start, end };
  });
  const total = Math.max(analytics.duration_seconds || 0, t, 1);
  for (const s of spans) {
    const row = Math.max(0, speakers.indexOf(s.speaker));
    chart.append(svg("rect", { x: (s.start / total) * width, y: 4 + row * 20, width: Math.max(1, ((s.end - s.start) / total) * width),
      height: 14, class: `bar role-${analytics.speakers[row]?.role || "other"}` }, svg("title", {}, `${s.speaker}: ${s.start.toFixed(1)}-${s.end.toFixed(1)} s`)));
  }
  chart.append(svg("text", { x: 0, y: height - 2, class: "label" }, "0 s"),
    svg("text", { x: width - 40, y: height - 2, class: "label" }, `${Math.round(total)} s`));
  return chart;
}

function highlight(ids, button) {
  for (const li of $("analyze-transcript").children) li.classList.toggle("hl", ids.includes(li.dataset.id));
  for (const b of $("analyze-outputs").querySelectorAll(".evidence")) b.setAttribute("aria-pressed", b === button ? "true" : "false");
  const firstHit = [...$("analyze-transcript").children].find((li) => ids.includes(li.dataset.id));
  if (firstHit) firstHit.scrollIntoView({ block: "nearest" });
  status(ids.length ? `Evidence: ${ids.join(", ")}` : "No evidence turns for this output.");
}

function evidenceButton(text, ids) {
  const b = el("button", { type: "button", class: "evidence", "aria-pressed": "false", "data-ids": ids.join(" ") }, text);
  b.addEventListener("click", () => highlight(ids, b));
  return b;
}

function renderTask(name, entry) {
  const out = entry.output;
  const head = el("h3", {}, name, " ", el("span", { class: "muted" },
    `${entry.predictor || ""}${entry.confidence != null ? ` · confidence ${entry.confidence.toFixed(2)}` : ""}${entry.valid ? "" : " · invalid"}`));
  const body = el("div", { class: "task-output" });
  if (out === null || out === undefined) body.append(el("p", { class: "error" }, entry.error || "no answer"));
  else if (Array.isArray(out)) {
    if (!out.length) body.append(el("p", { class: "muted" }, "(none)"));
    body.append(el("ul", { class: "plain" }, ...out.map((item) => {
      const extra = Object.entries(item).filter(([k]) => !["text", "message_ids"].includes(k) && item[k] !== null)
        .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
      return el("li", {}, evidenceButton(item.text ?? JSON.stringify(item), item.message_ids || []), extra ? el("span", { class: "muted" }, ` ${extra}`) : null);
    })));
  } else if (typeof out === "object") {
    const text = out.label ?? Object.entries(out).filter(([k]) => k !== "message_ids").map(([k, v]) => `${k}: ${v}`).join(" · ");
    body.append(evidenceButton(String(text), out.message_ids || []));
  } else body.append(el("p", {}, String(out)));
  return el("section", { class: "task" }, head, body);
}

async function runAnalyze() {
  const parsed = await readTranscript();
  const conv = parsed.data[0];
  const tasks = [...document.querySelectorAll('#analyze-tasks input[name="task"]:checked')].map((i) => i.value);
  if (!tasks.length) throw new Error("Pick at least one task.");
  status(`Analyzing (${parsed.format}, ${conv.messages.length} turns)…`);
  const messages = conv.messages.map((m) => {
    const out = { id: m.id, speaker: m.speaker, text: m.text };
    if (m.start != null && m.end != null) { out.start = m.start; out.end = m.end; }
    if (m.role) out.role = m.role;
    return out;
  });
  const r = await api("/v1/conversations/analyze", {
    method: "POST",
    body: { model: $("analyze-model").value, tasks, redact: $("analyze-redact").checked, conversation: { messages } },
  });
  $("analyze-result").hidden = false;
  $("analyze-usage").textContent = `${r.model} · ${r.usage.seconds.toFixed(1)} s`;
  $("analyze-outputs").replaceChildren(...Object.entries(r.tasks).map(([name, entry]) =>
    el("div", {}, renderTask(name, entry), feedbackWidget(r.id, name, `the ${name} answer`))));
  $("analyze-transcript").replaceChildren(...r.messages.map((m) =>
    el("li", { "data-id": m.id }, el("span", { class: "who" }, `${m.id} · ${m.speaker}`), el("span", {}, m.text))));
  const a = r.analytics;
  $("analyze-charts").replaceChildren(
    el("p", {}, `Duration ${a.duration_seconds.toFixed(0)} s${a.timed ? "" : " (estimated from words)"} · ` +
      `silence ${Math.round(a.silence_share * 100)}% · ${a.turn_count} turns · ${a.interruptions} interruptions`),
    el("h3", {}, "Speaker share"), speakerChart(a), el("h3", {}, "Turns"), timeline(messages, a));
  const red = Object.entries(r.redactions || {});
  $("analyze-redactions").textContent = red.length ? red.map(([k, v]) => `${k}: ${v}`).join(" · ") : "nothing redacted";
  status(`Analyzed in ${r.usage.seconds.toFixed(1)} s.`);
}

// ---- compare --------------------------------------------------------------------------------

async function runCompare() {
  const text = $("compare-input").value.trim();
  if (!text) throw new Error("Type an input first.");
  const sides = ["a", "b"];
  for (const s of sides) {
    $(`compare-${s}-name`).textContent = $(`compare-${s}`).value;
    $(`compare-${s}-out`).textContent = "";
    $(`compare-${s}-fb`).replaceChildren();
  }
  const ids = {};
  await Promise.all(sides.map(async (s) => {
    const body = chatBody([{ role: "user", content: text }], "compare-max-tokens", `compare-${s}`);
    body.temperature = 0;
    const out = await streamChat(body, (d) => { $(`compare-${s}-out`).textContent += d; });
    ids[s] = out.id;
    $(`compare-${s}-fb`).append(el("p", { class: "muted" },
      `${out.usage?.completion_tokens ?? "?"} tokens${out.tokensPerSecond ? ` · ${out.tokensPerSecond.toFixed(1)} tokens/s` : ""}`));
  }));
  for (const [s, other] of [["a", "b"], ["b", "a"]]) {
    const note = el("span", { class: "muted", role: "status" });
    $(`compare-${s}-fb`).append(el("button", { type: "button", class: "small", onclick: async () => {
      try {
        await api("/v1/feedback", { method: "POST", body: { response_id: ids[s], type: "preference", other_response_id: ids[other] } });
        note.textContent = "Preference recorded.";
        refreshFeedback().catch(() => {});
      } catch (err) { note.textContent = err.message; }
    } }, `Prefer ${s.toUpperCase()}`), note);
  }
  status("Both answered.");
}

// ---- tune -----------------------------------------------------------------------------------

let uploaded = null;

async function uploadTraining() {
  const file = $("tune-file").files[0];
  if (!file) throw new Error("Choose a training file first.");
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  status(`Uploading ${file.name}…`);
  const f = await api("/v1/files", { method: "POST", form });
  const report = $("tune-report");
  if (f.status === "error") {
    uploaded = null;
    $("tune-start").disabled = true;
    const problems = f.problems || [];
    report.replaceChildren(el("p", { class: "error" }, `${f.filename}: ${problems.length || "some"} problem(s); nothing was stored for training.`),
      el("table", { class: "problems" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Line"), el("th", { scope: "col" }, "Field"), el("th", { scope: "col" }, "Problem"))),
        el("tbody", {}, ...(problems.length ? problems : [{ message: f.status_details }]).map((p) =>
          el("tr", {}, el("td", {}, p.line ?? ""), el("td", {}, p.field ?? ""), el("td", {}, p.message))))));
    status("The file has problems.", true);
    return;
  }
  uploaded = f;
  $("tune-start").disabled = false;
  report.replaceChildren(el("p", { class: "ok" }, `${f.filename}: ${f.records} ${f.kind || ""} records, valid (${f.id}).`));
  status("File validated.");
}

async function startJob() {
  if (!uploaded) throw new Error("Upload a valid training file first.");
  const hp = { n_epochs: Number($("tune-epochs").value || 1) };
  if ($("tune-steps").value) hp.max_steps = Number($("tune-steps").value);
  if ($("tune-lr").value) hp.learning_rate_multiplier = Number($("tune-lr").value);
  if ($("tune-save").value) hp.save_every = Number($("tune-save").value);
  const job = await api("/v1/fine_tuning/jobs", {
    method: "POST",
    body: { training_file: uploaded.id, model: $("tune-base").value, suffix: $("tune-suffix").value || undefined,
      seed: Number($("tune-seed").value || 42), method: { type: "supervised", supervised: { hyperparameters: hp } } },
  });
  status(`Job ${job.id} queued.`);
  await refreshJobs();
  openJob(job.id);
}

async function refreshJobs() {
  const data = await api("/v1/fine_tuning/jobs?limit=20");
  $("tune-jobs").replaceChildren(...data.data.map((j) =>
    el("li", {}, el("button", { type: "button", class: "link", onclick: () => openJob(j.id) }, j.id), ` ${j.status}`,
      j.fine_tuned_model ? el("span", { class: "muted" }, ` → ${j.fine_tuned_model}`) : null)));
}

function lossChart(points) {
  const width = 420, height = 160, pad = 30;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart", id: "loss-chart",
    "aria-label": `Training loss over ${points.length} logged steps` });
  if (!points.length) {
    chart.append(svg("text", { x: pad, y: height / 2, class: "label" }, "no loss logged yet"));
    return chart;
  }
  const maxStep = Math.max(...points.map((p) => p.total || p.step), 1);
  const losses = points.map((p) => p.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses), span = hi - lo || 1;
  const x = (s) => pad + ((width - 2 * pad) * s) / maxStep;
  const y = (l) => height - pad - ((height - 2 * pad) * (l - lo)) / span;
  chart.append(svg("polyline", { class: "line", fill: "none", points: points.map((p) => `${x(p.step)},${y(p.loss)}`).join(" ") }));
  for (const p of points) chart.append(svg("circle", { class: "point", cx: x(p.step), cy: y(p.loss), r: 3 }, svg("title", {}, `step ${p.step}: ${p.loss}`)));
  chart.append(svg("text", { x: 0, y: pad, class: "label" }, hi.toFixed(2)), svg("text", { x: 0, y: height - pad, class: "label" }, lo.toFixed(2)),
    svg("text", { x: width - pad - 40, y: height - 6, class: "label" }, `step ${maxStep}`));
  return chart;
}

function validationTable(validation) {
  // one row per label field: each candidate predictor's validation score and the one chosen
  const rows = (validation && validation.validation) || [];
  if (!rows.length) return el("p", { class: "muted" }, "(when the job has it)");
  const th = (t) => el("th", { scope: "col" }, t);
  return el("table", {},
    el("thead", {}, el("tr", {}, th("Field"), th("Metric"), th("Validation n"), th("Scores"), th("Answered by"))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", {}, r.field), el("td", {}, r.metric), el("td", {}, r.n_validation),
      el("td", {}, Object.entries(r.scores || {}).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(" · ") || "-"),
      el("td", {}, r.winner + (r.fallback ? " (default: too little validation data)" : ""))))));
}

async function refreshJob() {
  const id = state.job;
  if (!id) return;
  const [job, events, ckpts] = await Promise.all([
    api(`/v1/fine_tuning/jobs/${id}`), api(`/v1/fine_tuning/jobs/${id}/events?limit=1000`), api(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`),
  ]);
  $("tune-job").hidden = false;
  $("tune-job-id").textContent = job.id;
  $("tune-job-status").textContent = job.status + (job.fine_tuned_model ? ` → ${job.fine_tuned_model}` : "") + (job.error ? `: ${job.error.message}` : "");
  const eta = job.estimated_finish ? `estimated finish ${fmtTime(job.estimated_finish)}` : "";
  $("tune-job-eta").textContent = [job.trained_tokens ? `${job.trained_tokens} tokens trained` : "", eta].filter(Boolean).join(" · ");
  const running = ["queued", "running", "validating_files"].includes(job.status);
  $("tune-cancel").disabled = !(running || job.status === "paused");
  $("tune-pause").disabled = job.status !== "running";
  $("tune-resume").disabled = job.status !== "paused";
  const points = events.data.filter((e) => e.type === "metrics" && e.data && e.data.train_loss !== undefined)
    .map((e) => ({ step: e.data.step, total: e.data.total_steps, loss: e.data.train_loss })).sort((a, b) => a.step - b.step);
  $("tune-loss").replaceChildren(lossChart(points));
  $("tune-events").replaceChildren(...events.data.slice(0, 50).map((e) =>
    el("li", { class: e.level }, el("span", { class: "muted" }, fmtTime(e.created_at)), " ", e.message)));
  const models = [...ckpts.data.map((c) => ({ id: c.fine_tuned_model_checkpoint, label: `step ${c.step_number}` }))];
  if (job.fine_tuned_model) models.unshift({ id: job.fine_tuned_model, label: "final" });
  $("tune-checkpoints").replaceChildren(...models.map((m) => el("li", {}, `${m.label}: ${m.id} `,
    el("button", { type: "button", class: "small", onclick: () => tryInChat(m.id) }, "Try in chat"))));
  $("tune-validation").replaceChildren(validationTable(job.validation));
  if (!running && job.status !== "paused") stopPolling();
  if (!running) {
    refreshModels().catch(() => {});
    refreshJobs().catch(() => {});
  }
}

function stopPolling() {
  if (state.poll) clearInterval(state.poll);
  state.poll = null;
}

function openJob(id) {
  state.job = id;
  stopPolling();
  refreshJob().catch((err) => status(err.message, true));
  state.poll = setInterval(() => refreshJob().catch((err) => status(err.message, true)), 1500);
}

async function jobAction(action) {
  if (!state.job) return;
  await api(`/v1/fine_tuning/jobs/${state.job}/${action}`, { method: "POST" });
  status(`Asked to ${action} ${state.job}.`);
  openJob(state.job);
}

let showTab = null;
async function tryInChat(modelId) {
  await refreshModels();
  $("chat-model").value = modelId;
  showTab("chat");
  $("chat-input").focus();
  status(`Chatting with ${modelId}.`);
}

// ---- feedback -------------------------------------------------------------------------------

async function refreshFeedback() {
  const data = await api("/v1/feedback?limit=200");
  $("feedback-table").tBodies[0].replaceChildren(...data.data.map((f) => el("tr", {},
    el("td", {}, fmtTime(f.created_at)), el("td", {}, f.type + (f.task ? ` (${f.choice})` : "")),
    el("td", {}, typeof f.value === "string" ? f.value : JSON.stringify(f.value)),
    el("td", {}, f.model || ""), el("td", {}, el("span", { class: "clip" }, f.answer || "")))));
}

async function exportFeedback() {
  const data = await api("/v1/feedback/export");
  download("convtune-feedback.json", JSON.stringify(data, null, 2));
  status(`Exported ${data.preferences.length} preference pairs and ${data.kto.length} KTO examples.`);
}

// ---- collections ----------------------------------------------------------------------------

const splitList = (s) => s.split(",").map((t) => t.trim()).filter(Boolean);

async function createCollection(e) {
  e.preventDefault();
  const name = $("coll-name").value.trim();
  await api("/v1/collections", { method: "POST", body: { name } });
  $("coll-name").value = "";
  await refreshCollections();
  $("coll-target").value = name;
  status(`Created collection ${name}.`);
}

async function addDocument() {
  const coll = $("coll-target").value;
  if (!coll) throw new Error("Create a collection first.");
  const tags = splitList($("doc-tags").value);
  const r = await api(`/v1/collections/${encodeURIComponent(coll)}/documents`, {
    method: "POST", body: { documents: [{ id: $("doc-id").value.trim(), text: $("doc-text").value, metadata: tags.length ? { tags } : {} }] },
  });
  status(`${coll}: ${r.added} added, ${r.updated} updated, ${r.count} chunks in all.`);
  await refreshCollections();
}

async function searchCollection() {
  const coll = $("coll-target").value;
  if (!coll) throw new Error("Pick a collection (left) first.");
  const body = { query: $("search-query").value, k: Number($("search-k").value || 5), tags: splitList($("search-tags").value) };
  if ($("search-speaker").value.trim()) body.speaker = $("search-speaker").value.trim();
  const r = await api(`/v1/collections/${encodeURIComponent(coll)}/search`, { method: "POST", body });
  $("search-hits").replaceChildren(...r.data.map((h) => el("li", {},
    el("span", { class: "muted" }, `${h.id} · score ${h.score}`), el("pre", {}, h.text))));
  status(`${r.data.length} chunk(s) from ${coll}.`);
}

// ---- wiring ---------------------------------------------------------------------------------

function on(id, event, fn) { $(id).addEventListener(event, fn); }

function main() {
  showTab = setupTabs();
  on("signin", "submit", async (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    try { await signIn(key); } catch (err) { status(`Sign-in failed: ${err.message}`, true); }
  });
  on("signout", "click", signOut);
  on("chat-form", "submit", sendChat);
  on("chat-input", "keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("chat-form").requestSubmit(); });
  on("chat-clear", "click", () => { chatHistory = []; $("chat-log").replaceChildren(); });
  on("analyze-run", "click", (e) => guarded(e.currentTarget, runAnalyze));
  on("compare-run", "click", (e) => guarded(e.currentTarget, runCompare));
  on("compare-b", "change", () => { $("compare-b").dataset.touched = "1"; });
  on("tune-upload", "click", (e) => guarded(e.currentTarget, uploadTraining));
  on("tune-start", "click", (e) => guarded(e.currentTarget, startJob));
  on("tune-refresh", "click", (e) => guarded(e.currentTarget, refreshJobs));
  for (const action of ["cancel", "pause", "resume"]) on(`tune-${action}`, "click", (e) => guarded(e.currentTarget, () => jobAction(action)));
  on("feedback-refresh", "click", (e) => guarded(e.currentTarget, refreshFeedback));
  on("feedback-export", "click", (e) => guarded(e.currentTarget, exportFeedback));
  on("coll-create", "submit", (e) => createCollection(e).catch((err) => status(err.message, true)));
  on("doc-add", "click", (e) => guarded(e.currentTarget, addDocument));
  on("search-run", "click", (e) => guarded(e.currentTarget, searchCollection));
  const key = sessionStorage.getItem(KEY);
  if (key) signIn(key).catch((err) => status(`Sign-in failed: ${err.message}`, true));
  else $("api-key").focus();
}

document.addEventListener("DOMContentLoaded", main);
