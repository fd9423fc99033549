// Shared by the pages: requests (with the optional API key), the model list, the reader of the
// server's OpenAI-style SSE stream, and a tiny element builder. Plain browser JavaScript, no build.
// Whatever a model or a user wrote is put in the page as text (text nodes, textContent), never
// parsed as HTML: a reply holding <script> or <img src=...> shows those characters, and the
// server's Content-Security-Policy refuses inline scripts and remote loads besides.
"use strict";

const TF = {
  apiKey() {
    return localStorage.getItem("twofiles.apiKey") || "";
  },

  headers() {
    const h = { "Content-Type": "application/json" };
    const key = TF.apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  },

  // The message of any error body this server sends: OpenAI's {"error": {"message"}} or
  // FastAPI's {"detail": "..."} / {"detail": [{"loc": [...], "msg": "..."}]}.
  errorMessage(data, status) {
    if (data && data.error) return typeof data.error === "string" ? data.error : data.error.message;
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) {
      return data.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ");
    }
    return "HTTP " + status;
  },

  async json(method, url, body) {
    const res = await fetch(url, { method, headers: TF.headers(), body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      /* a body that is not JSON: the status says enough */
    }
    if (!res.ok) throw new Error(TF.errorMessage(data, res.status));
    return data;
  },

  async models() {
    const data = await TF.json("GET", "/v1/models");
    return (data.data || []).map((m) => m.id);
  },

  // POST `body` and yield each JSON chunk of the `data: ...` event stream until `data: [DONE]`.
  // fetch + ReadableStream rather than EventSource, which can only GET.
  async *stream(url, body, signal) {
    const res = await fetch(url, { method: "POST", headers: TF.headers(), body: JSON.stringify(body), signal });
    if (!res.ok) {
      let data = null;
      try {
        data = await res.json();
      } catch (e) {}
      throw new Error(TF.errorMessage(data, res.status));
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      // events end with a blank line; a chunk of the body may hold several events or part of one
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(TF.errorMessage(chunk, 500));
        yield chunk;
      }
    }
  },

  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      // through the CSSOM: the pages' Content-Security-Policy refuses style attributes
      else if (k === "style") node.style.cssText = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  },

  // Settings drawer common to every page: the API key, kept in this browser only.
  initKeyField(input) {
    if (!input) return;
    input.value = TF.apiKey();
    input.addEventListener("change", () => localStorage.setItem("twofiles.apiKey", input.value.trim()));
  },
};
