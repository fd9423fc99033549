// The Inside page: a prompt's logit lens (POST /inside/run), one layer's attention heads
// (POST /inside/attention) drawn on canvases, and the SAE features at each token with links to
// their dashboards. Every token and feature is put in the page as text (TF.el, textContent) or
// drawn on a canvas, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

let info = null; // GET /inside/models
let run = null; // the last /inside/run reply, and the prompt and model it was for
let attn = null; // the last /inside/attention reply
let attnAsked = 0; // which attention request is the latest: an older reply arriving late is dropped

function showError(msg) {
  $("error").textContent = msg || "";
}

// a token with its invisible parts made visible
function visible(text) {
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "(empty)";
}

function pct(p) {
  return (100 * p).toFixed(1) + "%";
}

function modelInfo() {
  return (info.models || []).find((m) => m.name === $("model").value);
}

async function loadModels() {
  info = await TF.json("GET", "/inside/models");
  $("model").replaceChildren(...info.models.map((m) => TF.el("option", { value: m.name }, m.name)));
  describeModel();
}

function describeModel() {
  const m = modelInfo();
  if (!m) return;
  const saes = m.saes.map((s) => `${s.name} (${s.d_sae} features at ${s.hook_name})`);
  $("modelinfo").textContent =
    `${m.n_layers} layers, ${m.n_heads} heads; prompts up to ${m.max_tokens} tokens. ` +
    (saes.length ? "SAEs: " + saes.join(", ") : "No SAE loaded (serve --sae DIR).");
}

// --- the tooltip ------------------------------------------------------------------------------

function place(box, x, y) {
  box.hidden = false;
  const left = Math.min(x + 12, window.innerWidth - box.offsetWidth - 8);
  const below = y + 14 + box.offsetHeight < window.innerHeight;
  box.style.left = Math.max(8, left) + "px";
  box.style.top = (below ? y + 14 : Math.max(8, y - box.offsetHeight - 8)) + "px";
}

function hideTip() {
  $("tokinfo").hidden = true;
}

function lensTip(cell, layer, pos) {
  const box = $("tokinfo");
  const lens = run.data.lens;
  const top = lens.top[layer][pos];
  const next = pos + 1 < run.data.tokens.length ? run.data.tokens[pos + 1] : null;
  box.replaceChildren(
    TF.el("div", { class: "head" }, `${lens.layers[layer]} · after “${visible(run.data.tokens[pos])}”`),
    TF.el(
      "table",
      {},
      top.map((alt) =>
        TF.el(
          "tr",
          { class: next !== null && alt.token === next ? "alt chosen" : "alt" },
          TF.el("td", { class: "t" }, visible(alt.token)),
          TF.el("td", { class: "bar" }, TF.el("div", { style: `width:${(100 * alt.p).toFixed(1)}%` })),
          TF.el("td", { class: "p" }, pct(alt.p))
        )
      )
    ),
    TF.el(
      "div",
      { class: "hint" },
      (next !== null ? `next “${visible(next)}”: ${pct(lens.next_prob[layer][pos])}; ` : "") +
        `entropy ${lens.entropy_bits[layer][pos].toFixed(2)} bits`
    )
  );
  const r = cell.getBoundingClientRect();
  place(box, r.left, r.bottom - 8);
}

// --- the lens grid ----------------------------------------------------------------------------

function drawLens() {
  const { tokens, lens } = run.data;
  $("lenshint").textContent =
    `${lens.layers.length} rows (the embeddings, then after each block; the last row is the model's own prediction) × ${tokens.length} positions. ` +
    "Each cell: the most likely next token there, shaded by its probability; bold when it is the token that actually comes next.";
  const head = TF.el("tr", {}, TF.el("th", {}, ""), tokens.map((t) => TF.el("th", { class: "t" }, visible(t))));
  const rows = lens.layers.map((name, layer) =>
    TF.el(
      "tr",
      {},
      TF.el("th", { class: "layer" }, name),
      tokens.map((_, pos) => {
        const best = lens.top[layer][pos][0];
        const hit = pos + 1 < tokens.length && best.token === tokens[pos + 1];
        const cell = TF.el(
          "td",
          { class: hit ? "cell hit" : "cell", style: `--p:${best.p.toFixed(3)}`, dataset: { layer, pos } },
          visible(best.token)
        );
        cell.addEventListener("mouseenter", () => lensTip(cell, layer, pos));
        cell.addEventListener("mouseleave", hideTip);
        return cell;
      })
    )
  );
  $("lens").replaceChildren(TF.el("thead", {}, head), TF.el("tbody", {}, rows));
}

function drawTokens() {
  $("tokens").replaceChildren(...run.data.tokens.map((t, i) => TF.el("span", { class: "tok", title: `position ${i}, id ${run.data.ids[i]}` }, visible(t))));
}

// --- attention --------------------------------------------------------------------------------

const LABEL = 90; // pixels for the token labels along the big map's edges

function shade(w) {
  return `rgba(47, 111, 223, ${Math.sqrt(Math.max(0, w)).toFixed(3)})`;
}

function paint(canvas, pattern, cell, label) {
  const T = pattern.length;
  const ctx = canvas.getContext("2d");
  canvas.width = label + T * cell;
  canvas.height = label + T * cell;
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  pattern.forEach((row, q) =>
    row.forEach((w, k) => {
      ctx.fillStyle = shade(w);
      ctx.fillRect(label + k * cell, label + q * cell, cell, cell);
    })
  );
  if (!label) return;
  ctx.fillStyle = "#444";
  ctx.font = `${Math.min(12, Math.max(8, cell - 2))}px ui-monospace, monospace`;
  ctx.textBaseline = "middle";
  const cut = (s) => (s.length > 10 ? s.slice(0, 9) + "…" : s);
  run.data.tokens.forEach((t, i) => {
    ctx.textAlign = "right";
    ctx.fillText(cut(visible(t)), label - 4, label + (i + 0.5) * cell); // the query, on its row
    ctx.save();
    ctx.translate(label + (i + 0.5) * cell, label - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(cut(visible(t)), 0, 0); // the key, over its column
    ctx.restore();
  });
}

function cellSize(T) {
  return Math.max(4, Math.min(28, Math.floor(640 / T)));
}

function drawHead() {
  if (!attn) return;
  const head = Number($("head").value);
  const i = attn.heads.indexOf(head);
  if (i < 0) return fetchAttention(); // only one head was sent: ask for this one
  const pattern = attn.patterns[i];
  const canvas = $("attn");
  canvas._pattern = pattern;
  canvas._cell = cellSize(pattern.length);
  paint(canvas, pattern, canvas._cell, LABEL);
  canvas.dataset.layer = attn.layer;
  canvas.dataset.head = head;
  document.querySelectorAll("#heads canvas").forEach((c) => c.classList.toggle("here", Number(c.dataset.head) === head));
}

function drawThumbnails() {
  const T = run.data.tokens.length;
  const cell = Math.max(1, Math.floor(96 / T));
  $("heads").replaceChildren(
    ...attn.heads.map((h, i) => {
      const c = TF.el("canvas", { title: `layer ${attn.layer}, head ${h}`, dataset: { head: h } });
      paint(c, attn.patterns[i], cell, 0);
      c.addEventListener("click", () => {
        $("head").value = String(h);
        drawHead();
      });
      return TF.el("figure", {}, c, TF.el("figcaption", {}, `head ${h}`));
    })
  );
}

async function fetchAttention() {
  if (!run) return;
  const m = run.data;
  const layer = Number($("layer").value);
  const T = m.tokens.length;
  // every head at once when the reply stays under the server's limit, else the chosen one
  const all = (m.n_heads * T * (T + 1)) / 2 <= info.max_attention_values;
  const body = { model: run.model, prompt: run.prompt, layer };
  if (!all) body.head = Number($("head").value);
  $("attnhint").textContent = "…";
  const asked = ++attnAsked;
  try {
    const reply = await TF.json("POST", "/inside/attention", body);
    if (asked !== attnAsked || run.data !== m) return;
    attn = reply;
    $("attnhint").textContent = all ? "" : "one head at a time at this length";
    drawThumbnails();
    drawHead();
  } catch (e) {
    $("attnhint").textContent = "";
    showError(e.message);
  }
}

function attentionTip(e) {
  const canvas = $("attn");
  const pattern = canvas._pattern;
  if (!pattern) return;
  const r = canvas.getBoundingClientRect();
  const scale = canvas.width / r.width;
  const k = Math.floor(((e.clientX - r.left) * scale - LABEL) / canvas._cell);
  const q = Math.floor(((e.clientY - r.top) * scale - LABEL) / canvas._cell);
  if (q < 0 || k < 0 || q >= pattern.length || k > q) return hideTip();
  const t = run.data.tokens;
  $("tokinfo").replaceChildren(
    TF.el("div", { class: "head" }, `layer ${attn.layer}, head ${canvas.dataset.head}`),
    TF.el("div", {}, `“${visible(t[q])}” (${q}) → “${visible(t[k])}” (${k}): `, TF.el("b", {}, pattern[q][k].toFixed(3)))
  );
  place($("tokinfo"), e.clientX, e.clientY);
}

// --- SAE features -----------------------------------------------------------------------------

function drawFeatures() {
  const saes = run.data.saes || [];
  $("features-section").hidden = !saes.length;
  $("features").replaceChildren(
    ...saes.map((s) =>
      TF.el(
        "div",
        { class: "sae", dataset: { sae: s.id } },
        TF.el(
          "h4",
          {},
          `${s.name} · ${s.hook_name} · ${s.d_sae} features (${s.kind}) `,
          s.dashboards ? TF.el("a", { href: `/inside/sae/${encodeURIComponent(s.id)}/index.html`, target: "_blank", rel: "noopener" }, "all dashboards") : null
        ),
        TF.el(
          "table",
          { class: "features" },
          s.features.map((row, pos) =>
            TF.el(
              "tr",
              {},
              TF.el("td", { class: "t" }, visible(run.data.tokens[pos])),
              TF.el(
                "td",
                {},
                row.length
                  ? row.map((f) => {
                      const label = `#${f.feature} ${f.act.toFixed(2)}`;
                      return f.dashboard
                        ? TF.el("a", { class: "feat", href: f.dashboard, target: "_blank", rel: "noopener" }, label)
                        : TF.el("span", { class: "feat" }, label);
                    })
                  : TF.el("span", { class: "hint" }, "none fire")
              )
            )
          )
        )
      )
    )
  );
}

// --- a run ------------------------------------------------------------------------------------

async function look(e) {
  e.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt) return;
  showError("");
  $("look").disabled = true;
  try {
    const model = $("model").value;
    const data = await TF.json("POST", "/inside/run", {
      model,
      prompt,
      top: Number($("top").value) || 5,
      features: Number($("nfeatures").value) || 5,
    });
    run = { model, prompt, data };
    attn = null;
    const layer = Math.min(Number($("layer").value) || 0, data.n_layers - 1);
    const head = Math.min(Number($("head").value) || 0, data.n_heads - 1);
    $("layer").replaceChildren(...Array.from({ length: data.n_layers }, (_, i) => TF.el("option", { value: i }, i)));
    $("head").replaceChildren(...Array.from({ length: data.n_heads }, (_, i) => TF.el("option", { value: i }, i)));
    $("layer").value = String(layer);
    $("head").value = String(head);
    $("results").hidden = false;
    drawTokens();
    drawLens();
    drawFeatures();
    await fetchAttention();
  } catch (err) {
    showError(err.message);
  } finally {
    $("look").disabled = false;
  }
}

$("ask").addEventListener("submit", look);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("ask").requestSubmit();
  }
});
$("model").addEventListener("change", describeModel);
$("layer").addEventListener("change", fetchAttention);
$("head").addEventListener("change", drawHead);
$("attn").addEventListener("mousemove", attentionTip);
$("attn").addEventListener("mouseleave", hideTip);
TF.initKeyField($("apikey"));
loadModels().catch((e) => showError(e.message));
