// Shared by the page scripts (form.js: next-token questions; trajectory.js: whole continuations): the participant,
// the JSON API with its CSRF header, and text with its whitespace made visible. Plain DOM, no build step; text from
// the server is only ever inserted with textContent, never as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let me = null; // /api/me: name, csrf token, suite, progress

// --- helpers -------------------------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { "accept": "application/json", ...(options.headers || {}) };
  if (options.body) { headers["content-type"] = "application/json"; headers["x-csrf-token"] = me ? me.csrf : ""; }
  const resp = await fetch(path, { ...options, headers, credentials: "same-origin" });
  const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(data.detail || `HTTP ${resp.status}`);
  return data;
}

// Render text with its whitespace visible: · space, ↵ line break (then the break), → tab.
function visible(text, into) {
  let plain = "";
  const flush = () => { if (plain) { into.append(document.createTextNode(plain)); plain = ""; } };
  for (const ch of text) {
    const mark = ch === " " ? "·" : ch === "\n" ? "↵" : ch === "\t" ? "→" : ch === "\r" ? "␍" : null;
    if (mark === null) { plain += ch; continue; }
    flush();
    const span = document.createElement("span");
    span.className = "ws"; span.textContent = mark;
    into.append(span);
    if (ch === "\n") into.append(document.createTextNode("\n"));
  }
  flush();
  return into;
}
