// The chat page: streams replies from /v1/chat/completions, shows each token's probability and
// its alternatives, tool calls, and sends thumbs / corrections to /feedback. With a server started
// with --rag, replies may be grounded in its documents: their [n] citations link to the passages.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_LOGPROBS = 5;
const END_MARK = "[end]"; // stands for the tokens that ended the reply and have no text
const MAX_TOOL_ROUNDS = 4; // model turns after tool results, per user message (as chat.respond)
let toolSpecs = null; // the server's runnable tools (GET /tools), fetched when first offered
let ragEnabled = false; // the server has a document index (GET /rag)
// [1], [2, 3]: as twofiles.rag.grounding.parse_citations reads them
const CITATION = /\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/g;

const history = []; // OpenAI-style messages of this conversation (no system message)
let controller = null; // aborts the reply being streamed
let busy = false; // a user turn is in progress (its replies and tool rounds)

function settings() {
  const seed = $("seed").value.trim();
  return {
    model: $("model").value,
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Math.floor(Number($("max_tokens").value)),
    seed: seed === "" ? undefined : Math.floor(Number(seed)),
  };
}

function systemMessages() {
  const s = $("system").value.trim();
  return s ? [{ role: "system", content: s }] : [];
}

function showError(msg) {
  $("error").textContent = msg || "";
}

// A token's text with its invisible parts made visible; a token that is only part of a UTF-8
// character shows its bytes (<0xE2>), as the API's `bytes` field gives them.
function visible(entry) {
  if (entry.token.includes("\ufffd") && Array.isArray(entry.bytes) && entry.bytes.length) {
    return entry.bytes.map((b) => "<0x" + b.toString(16).toUpperCase().padStart(2, "0") + ">").join("");
  }
  return entry.token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "(empty)";
}

function prob(logprob) {
  return Math.exp(logprob);
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

// --- the token die view --------------------------------------------------------------------

function showTokenInfo(span) {
  const box = $("tokinfo");
  box.replaceChildren();
  for (const entry of span._tokens) {
    const p = prob(entry.logprob);
    box.append(TF.el("div", { class: "head" }, "token ", TF.el("b", {}, "“" + visible(entry) + "”"), " drawn with probability " + pct(p)));
    const rows = (entry.top_logprobs || []).map((alt) =>
      TF.el(
        "tr",
        { class: alt.token === entry.token ? "alt chosen" : "alt" },
        TF.el("td", { class: "t" }, visible(alt)),
        TF.el("td", { class: "bar" }, TF.el("div", { style: `width:${(100 * prob(alt.logprob)).toFixed(1)}%` })),
        TF.el("td", { class: "p" }, pct(prob(alt.logprob)))
      )
    );
    box.append(rows.length ? TF.el("table", {}, rows) : TF.el("div", { class: "hint" }, "no alternatives sent"));
  }
  document.querySelectorAll(".tok.active").forEach((t) => t.classList.remove("active"));
  span.classList.add("active");
  box.hidden = false;
  const r = span.getBoundingClientRect();
  const left = Math.min(r.left, window.innerWidth - box.offsetWidth - 8);
  const below = r.bottom + 6 + box.offsetHeight < window.innerHeight;
  box.style.left = Math.max(8, left) + "px";
  box.style.top = (below ? r.bottom + 6 : Math.max(8, r.top - box.offsetHeight - 6)) + "px";
}

function hideTokenInfo() {
  $("tokinfo").hidden = true;
  document.querySelectorAll(".tok.active").forEach((t) => t.classList.remove("active"));
}

function tokenSpan(text, tokens, isEnd) {
  if (!tokens.length) return TF.el("span", { class: "piece" }, text); // the server sent no probabilities
  const p = tokens.length ? Math.min(...tokens.map((t) => prob(t.logprob))) : 1;
  const span = TF.el("span", { class: isEnd ? "tok end" : "tok", style: `--p:${p.toFixed(3)}`, title: pct(p) }, text);
  span._tokens = tokens;
  span.addEventListener("click", (e) => {
    e.stopPropagation();
    showTokenInfo(span);
  });
  span.addEventListener("mouseenter", () => showTokenInfo(span));
  return span;
}

// Text and the tokens that produced it, as spans: one per token where the tokens spell the text
// exactly (the usual case), so each token shows its own die however the server grouped them into
// chunks; what is left (a character split over tokens) becomes one span with all its tokens.
// Returns the tokens that have no text yet (the end of the turn, or text still held back).
function appendPieces(shell, text, entries) {
  let pos = 0;
  let i = 0;
  for (; i < entries.length; i++) {
    const t = entries[i].token;
    if (!t || t.includes("\ufffd") || !text.startsWith(t, pos)) break;
    shell.text.append(tokenSpan(t, [entries[i]], false));
    pos += t.length;
  }
  if (pos < text.length) {
    shell.text.append(tokenSpan(text.slice(pos), entries.slice(i), false));
    return [];
  }
  return entries.slice(i);
}

// --- citations ------------------------------------------------------------------------------------

// Wrap each citation in the reply's text in a link to its passage, leaving the token spans (and
// their dice) in place: a marker split over several tokens becomes one link piece per token.
// "[1]" links as a whole; in "[1, 3]" each number links to its own passage.
function linkCitations(container, sources) {
  const walker = document.createTreeWalker(container, NodeFilter.SHOW_TEXT);
  const nodes = []; // [text node, its offset in the whole text]
  let text = "";
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    nodes.push([n, text.length]);
    text += n.data;
  }
  const ranges = []; // [start, end, passage number]
  for (const m of text.matchAll(CITATION)) {
    const numbers = [...m[1].matchAll(/\d+/g)];
    for (const d of numbers) {
      const n = Number(d[0]);
      if (n < 1 || n > sources.length) continue;
      const at = m.index + 1 + d.index;
      ranges.push(numbers.length === 1 ? [m.index, m.index + m[0].length, n] : [at, at + d[0].length, n]);
    }
  }
  // last first: splitting a text node keeps its start, so earlier offsets stay true
  for (const [a, b, n] of ranges.reverse()) {
    for (const [node, at] of [...nodes].reverse()) {
      const lo = Math.max(a, at) - at;
      const hi = Math.min(b, at + node.data.length) - at;
      if (lo >= hi) continue;
      let piece = node;
      if (lo > 0) piece = piece.splitText(lo);
      if (hi - lo < piece.data.length) piece.splitText(hi - lo);
      const link = passageLink({ class: "cite", title: "read passage [" + n + "]", dataset: { n: String(n) } }, sources[n - 1]);
      piece.replaceWith(link);
      link.append(piece);
    }
  }
  return [...new Set(ranges.map((r) => r[2]))].sort((x, y) => x - y);
}

// A link that opens `source`'s passage beside itself.
function passageLink(attrs, source, ...children) {
  const link = TF.el("a", { href: "#", ...attrs }, ...children);
  link.addEventListener("click", (e) => {
    e.preventDefault();
    e.stopPropagation(); // a token under it would open its die, a click elsewhere closes the box
    showPassage(source, link);
  });
  return link;
}

// The passage behind a citation, fetched by id (GET /rag/passages/{id}) and shown beside the link.
async function showPassage(source, anchor) {
  hideTokenInfo();
  const box = $("passage");
  const where = source.source + (source.location ? " · " + source.location : "");
  box.replaceChildren(TF.el("div", { class: "head" }, TF.el("b", {}, "[" + source.n + "] "), where), TF.el("div", { class: "hint" }, "loading…"));
  box.hidden = false;
  const r = anchor.getBoundingClientRect();
  box.style.left = Math.max(8, Math.min(r.left, window.innerWidth - box.offsetWidth - 8)) + "px";
  box.style.top = Math.min(r.bottom + 6, window.innerHeight - box.offsetHeight - 8) + "px";
  try {
    const p = await TF.json("GET", "/rag/passages/" + encodeURIComponent(source.id));
    box.replaceChildren(
      TF.el("div", { class: "head" }, TF.el("b", {}, "[" + source.n + "] "), p.source + (p.location ? " · " + p.location : "")),
      TF.el("div", { class: "passage-text" }, p.text)
    );
  } catch (e) {
    box.replaceChildren(TF.el("div", { class: "error" }, "cannot load the passage: " + e.message));
  }
}

function hidePassage() {
  $("passage").hidden = true;
}

// How an attributed citation was made, for its tooltip: the model did not write these.
const ATTRIBUTED = {
  overlap: "attributed: the model wrote no [n]; this passage holds most of the words of a sentence of the reply",
  constrained: "attributed: the model wrote no [n]; asked for one after its reply, it chose this passage",
};

// Under a grounded reply: the passages it cited (each opens like its [n]), and how many it was
// given. `details` (the server's citation_details: {n, by}) adds the citations the server
// attributed; they are marked as such, so nobody takes them for the model's own words.
function addSources(shell, sources, cited, details) {
  const by = new Map(cited.map((n) => [n, "model"]));
  for (const d of details || []) if (!by.has(d.n) && d.n >= 1 && d.n <= sources.length) by.set(d.n, d.by);
  const items = [...by].map(([n, how]) => {
    const s = sources[n - 1];
    const attributed = how !== "model";
    const attrs = { class: "cite" + (attributed ? " attributed" : ""), dataset: { n: String(n), by: how } };
    if (attributed) attrs.title = ATTRIBUTED[how] || "attributed: " + how;
    const link = passageLink(attrs, s, "[" + n + "] " + s.source + (s.location ? ", " + s.location : ""));
    return TF.el("li", {}, link, attributed ? TF.el("span", { class: "hint by" }, " (attributed: " + how + ")") : null);
  });
  cited = [...by.keys()];
  const head = cited.length ? "Sources" : "No sources cited";
  shell.node.append(TF.el("div", { class: "sources" }, TF.el("span", { class: "hint" }, head + " (" + sources.length + " passages retrieved)"), items.length ? TF.el("ul", {}, items) : null));
}

async function loadRag() {
  try {
    const rag = await TF.json("GET", "/rag");
    ragEnabled = !!rag.enabled;
    if (ragEnabled) {
      const info = rag.info || {};
      // RagIndex.info: counts of files and chunks
      $("rag_info").textContent = [info.files !== undefined ? info.files + " files" : null, info.chunks !== undefined ? info.chunks + " passages" : null, rag.k + " per reply"].filter(Boolean).join(", ");
    }
  } catch (e) {
    ragEnabled = false; // an older server, or no key yet: the page works without it
  }
  $("rag_box").hidden = !ragEnabled;
  $("tool_names").textContent = ragEnabled ? "calculator, retrieve" : "calculator";
}

// --- rendering messages -----------------------------------------------------------------------

function toolCallText(call) {
  const f = call.function || {};
  return "tool call → " + (f.name || "?") + "(" + (f.arguments || "") + ")";
}

async function offeredTools() {
  if (!$("offer_tools").checked) return null;
  if (toolSpecs === null) toolSpecs = (await TF.json("GET", "/tools")).tools;
  return toolSpecs;
}

// Run one tool call on the server (POST /tools/run) and show its result under the call.
async function runTool(call, shell) {
  let content, error;
  try {
    const args = call.function.arguments ? JSON.parse(call.function.arguments) : {};
    const res = await TF.json("POST", "/tools/run", { name: call.function.name, arguments: args });
    [content, error] = [res.content, res.error];
  } catch (e) {
    [content, error] = ["error: " + e.message, true];
  }
  shell.calls.append(TF.el("div", { class: error ? "toolresult error" : "toolresult" }, "result ← " + content));
  return { role: "tool", tool_call_id: call.id, name: call.function.name, content };
}

function addUser(text) {
  const node = TF.el("div", { class: "msg user" }, text);
  $("conversation").append(node);
  node.scrollIntoView({ block: "end" });
}

function addAssistantShell(model) {
  const text = TF.el("div", { class: "text" });
  const calls = TF.el("div", { class: "calls" });
  const node = TF.el("div", { class: "msg assistant" }, TF.el("div", { class: "who" }, model), text, calls);
  $("conversation").append(node);
  return { node, text, calls };
}

async function sendFeedback(payload, status) {
  try {
    const res = await TF.json("POST", "/feedback", payload);
    status.textContent = "saved ✓ (#" + res.id + ")";
    status.className = "saved";
  } catch (e) {
    status.textContent = "not saved: " + e.message;
    status.className = "error";
  }
}

// Thumbs and "correct this answer" under a finished reply. `context` is the conversation the
// reply answered (system message included), `reply` the assistant message as sent back.
function addActions(shell, model, context, reply, meta) {
  const status = TF.el("span", { class: "saved" });
  const base = () => ({ model, messages: context, reply: { ...reply }, meta });
  // plain glyphs and words, not emoji: a machine without an emoji font shows boxes
  const up = TF.el("button", { title: "good answer", class: "thumb-up" }, "▲ Good");
  const down = TF.el("button", { title: "bad answer", class: "thumb-down" }, "▼ Bad");
  const fix = TF.el("button", { class: "correct" }, "Correct this answer");
  for (const [btn, rating] of [[up, "up"], [down, "down"]]) {
    btn.addEventListener("click", () => {
      up.classList.toggle("chosen", rating === "up");
      down.classList.toggle("chosen", rating === "down");
      sendFeedback({ ...base(), rating }, status);
    });
  }
  fix.addEventListener("click", () => {
    if (shell.node.querySelector(".correct-box")) return;
    const area = TF.el("textarea", { rows: 4, class: "correction" });
    area.value = reply.content;
    const save = TF.el("button", { class: "primary save-correction" }, "Save correction");
    const cancel = TF.el("button", {}, "Cancel");
    const box = TF.el("div", { class: "correct-box" }, area, TF.el("div", { class: "actions" }, save, cancel));
    cancel.addEventListener("click", () => box.remove());
    save.addEventListener("click", async () => {
      const correction = area.value;
      if (!correction.trim()) return;
      await sendFeedback({ ...base(), correction }, status);
      if (status.className === "saved") {
        // the conversation goes on from the corrected answer
        const i = history.indexOf(reply);
        if (i >= 0) history[i] = { role: "assistant", content: correction };
        shell.text.replaceChildren(correction);
        shell.node.querySelector(".who").append(TF.el("span", { class: "badge" }, "corrected"));
        box.remove();
      }
    });
    shell.node.append(box);
    area.focus();
  });
  shell.node.append(TF.el("div", { class: "actions" }, up, down, fix, status));
}

// A small note under a reply a guard acted on: which guard, where, and why.
function addGuardNote(shell, actions) {
  const items = actions.map((a) => TF.el("li", {}, a.guard + " guard (" + a.stage + "): " + ((a.reasons || []).join(", ") || "acted")));
  shell.node.append(TF.el("div", { class: "guard-note" }, TF.el("span", { class: "hint" }, "A guard acted on this reply:"), TF.el("ul", {}, items)));
}

// --- one turn -----------------------------------------------------------------------------------

async function send(text) {
  showError("");
  const s = settings();
  if (!s.model) return showError("no model: is the server running with one?");
  history.push({ role: "user", content: text });
  addUser(text);
  busy = true;
  try {
    for (let round = 0; round <= MAX_TOOL_ROUNDS; round++) {
      const turn = await streamReply(s);
      if (!turn || !turn.reply.tool_calls || !$("offer_tools").checked || round === MAX_TOOL_ROUNDS) break;
      // the agent loop, in the page: run each call, feed the results back, let the model go on
      for (const call of turn.reply.tool_calls) history.push(await runTool(call, turn.shell));
    }
  } finally {
    busy = false;
  }
}

// One assistant turn streamed into a new bubble; returns {reply, shell}, or null when it failed.
async function streamReply(s) {
  const context = [...systemMessages(), ...history];
  const body = {
    model: s.model,
    messages: context,
    stream: true,
    temperature: s.temperature,
    top_p: s.top_p,
    max_tokens: s.max_tokens,
    logprobs: true,
    top_logprobs: TOP_LOGPROBS,
  };
  if (s.seed !== undefined) body.seed = s.seed;
  if (ragEnabled && $("use_rag").checked) body.rag = true;

  const shell = addAssistantShell(s.model);
  let sources = null; // the passages a grounded reply was given (the stream's first chunk)
  let citationDetails = null; // how each citation was made (the choice's last chunk)
  const calls = []; // tool calls assembled from their streamed pieces
  let content = "";
  let pending = []; // logprob entries whose text has not arrived yet (held back, e.g. a split character)
  let finish = null;
  let failed = false;
  const guarded = []; // what the server's guards did to this turn (the chunks' `guard` field)
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").hidden = false;
  try {
    const tools = await offeredTools();
    if (tools && tools.length) body.tools = tools;
    for await (const chunk of TF.stream("/v1/chat/completions", body, controller.signal)) {
      if (chunk.sources) sources = chunk.sources;
      if (Array.isArray(chunk.guard)) guarded.push(...chunk.guard);
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      pending.push(...((choice.logprobs && choice.logprobs.content) || []));
      if (delta.content) {
        content += delta.content;
        pending = appendPieces(shell, delta.content, pending);
      }
      for (const tc of delta.tool_calls || []) {
        const i = tc.index ?? calls.length;
        calls[i] = calls[i] || { id: "", type: "function", function: { name: "", arguments: "" } };
        if (tc.id) calls[i].id = tc.id;
        if (tc.function && tc.function.name) calls[i].function.name += tc.function.name;
        if (tc.function && tc.function.arguments) calls[i].function.arguments += tc.function.arguments;
        shell.calls.replaceChildren(...calls.filter(Boolean).map((c) => TF.el("div", { class: "toolcall" }, toolCallText(c))));
      }
      if (choice.citation_details) citationDetails = choice.citation_details;
      if (choice.finish_reason) finish = choice.finish_reason;
      shell.node.scrollIntoView({ block: "end" });
    }
  } catch (e) {
    if (e.name === "AbortError") finish = finish || "stopped";
    else [failed, finish] = [true, "error"];
    if (failed) showError(e.message);
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").hidden = true;
  }
  if (pending.length) shell.text.append(tokenSpan(END_MARK, pending, true)); // the end-of-turn token's die
  const reply = { role: "assistant", content };
  const made = calls.filter(Boolean);
  made.forEach((c, i) => (c.id = c.id || "call_" + (history.length + i)));
  if (made.length) reply.tool_calls = made;
  shell.node.querySelector(".who").append(" · " + (finish || "done"));
  if (failed) return null; // nothing the model said: the conversation stays as it was sent
  if (!content && !made.length) shell.text.append(TF.el("span", { class: "hint" }, "(empty reply)"));
  if (sources) addSources(shell, sources, linkCitations(shell.text, sources), citationDetails);
  if (guarded.length) addGuardNote(shell, guarded);
  history.push(reply); // a stopped reply stays, as far as it got: it is what the page shows
  // a grounded reply's feedback names the passages that were in its prompt (the messages do not show them)
  addActions(shell, s.model, context, reply, { temperature: s.temperature, top_p: s.top_p, seed: s.seed ?? null, finish_reason: finish, page: "chat", ...(sources ? { rag_passages: sources.map((x) => x.id) } : {}) });
  return finish === "stopped" ? null : { reply, shell };
}

// --- wiring ------------------------------------------------------------------------------------

// A persona's defaults (its card in /v1/models) fill the settings when it is picked; the page's
// own defaults come back for a plain model. Its system message is the placeholder: an empty box
// leaves it to the server, which applies it (and the persona's few-shot turns) to every request.
const pageDefaults = {};
let cards = {};

function applyPersona() {
  const persona = (cards[$("model").value] || {}).persona;
  const given = (persona && persona.defaults) || {};
  for (const field of ["temperature", "top_p", "max_tokens", "seed"]) {
    if (!(field in pageDefaults)) pageDefaults[field] = $(field).value;
    $(field).value = field in given ? String(given[field]) : pageDefaults[field];
  }
  if (!("system" in pageDefaults)) pageDefaults.system = $("system").placeholder;
  $("system").placeholder = persona && persona.system ? persona.system : pageDefaults.system;
}

async function loadModels() {
  try {
    const data = await TF.json("GET", "/v1/models");
    const list = data.data || [];
    cards = Object.fromEntries(list.map((m) => [m.id, m]));
    $("model").replaceChildren(...list.map((m) => TF.el("option", { value: m.id }, m.persona ? `${m.id} (persona)` : m.id)));
    if (!list.length) showError("the server has no models");
    applyPersona();
  } catch (e) {
    showError("could not list models: " + e.message);
  }
}
$("model").addEventListener("change", applyPersona);

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value;
  if (!text.trim() || busy) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("conversation").replaceChildren();
  showError("");
});
$("offer_tools").addEventListener("change", () => showError(""));
$("colored").addEventListener("change", (e) => $("conversation").classList.toggle("colored", e.target.checked));
document.addEventListener("click", (e) => {
  if (!$("tokinfo").contains(e.target)) hideTokenInfo();
  if (!$("passage").contains(e.target)) hidePassage();
});
document.addEventListener("keydown", (e) => e.key === "Escape" && hidePassage());
$("apikey").addEventListener("change", loadRag);
TF.initKeyField($("apikey"));
loadModels();
loadRag();
