// The human prediction form: plain DOM, no build step. Everything it shows comes from the JSON API (see app.py);
// text from the server is only ever inserted with textContent, never as HTML.
"use strict";

let split = "practice", current = null, busy = false; // `me`, `$`, `api`, `visible`: common.js

// --- helpers -------------------------------------------------------------------------------------------------------
const tokenChip = (tok, cls) => {
  const el = visible(tok.text, document.createElement("span"));
  el.className = "tok " + cls; el.title = tok.raw ? `token ${tok.id} (${tok.raw})` : `token ${tok.id}`;
  return el;
};
const pct = (p) => p >= 0.0001 ? (100 * p).toFixed(2) + "%" : (100 * p).toPrecision(2) + "%";
// Typed text is composed (NFC) before it is tokenized or sent: an accent typed as a combining mark ("e" + U+0301, as
// some keyboards send) would otherwise become other tokens than the "é" it looks like. The server normalizes too.
const typedText = (row) => $(".cont", row).value.normalize("NFC");
const debounce = (fn, ms) => { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; };

// Probabilities are typed in percent; parsed to integer tenths so totals add up exactly on the page.
function tenths(raw) {
  const s = raw.trim().replace(/%$/, "").replace(",", ".");
  if (!/^\d{1,3}(\.\d*)?$|^\.\d+$/.test(s)) return null;
  const v = Math.round(parseFloat(s) * 10);
  return v > 0 && v <= 1000 ? v : null;
}

// --- candidate rows ------------------------------------------------------------------------------------------------
function mode() { return $("input[name=mode]:checked").value; }

function addRow(focus = true) {
  const rows = $("#rows");
  if (mode() === "quick" && rows.children.length >= 1) return;
  const row = $("#row-tpl").content.firstElementChild.cloneNode(true);
  const n = rows.children.length + 1, input = $(".cont", row), list = $(".sugg", row);
  list.id = `sugg-${Date.now()}-${n}`;
  input.setAttribute("aria-controls", list.id);
  row.dataset.active = "-1";
  input.addEventListener("input", () => { delete row.dataset.tokenId; delete row.dataset.tokenText; lookup(row); });
  input.addEventListener("keydown", (e) => comboKeys(e, row));
  // close the suggestions when focus leaves (after a mouse pick has had its turn), unless it came back meanwhile
  input.addEventListener("blur", () => setTimeout(() => { if (document.activeElement !== input) closeList(row); }, 150));
  $(".prob", row).addEventListener("input", updateTotal);
  $(".remove", row).addEventListener("click", () => { row.remove(); if (!$("#rows").children.length) addRow(); updateTotal(); });
  rows.append(row);
  relabel();
  updateTotal();
  if (focus) input.focus();
}

function relabel() {
  const quick = mode() === "quick";
  [...$("#rows").children].forEach((row, i) => {
    $(".cont", row).closest("label").firstChild.textContent = quick ? "Your guess " : `Continuation ${i + 1} `;
    $(".plabel", row).textContent = quick ? "Confidence" : "Probability";
  });
  $("#add").hidden = quick;
}

const lookup = debounce(async (row) => {
  const typed = $(".cont", row).value, text = typedText(row);
  const toks = $(".toks", row);
  if (!text) { toks.replaceChildren(); closeList(row); return; }
  const q = encodeURIComponent(text);
  try {
    const [tk, vc] = await Promise.all([api(`/api/tokenize?text=${q}`), api(`/api/vocab?q=${q}`)]);
    if ($(".cont", row).value !== typed) return; // typed on meanwhile
    if (!row.dataset.tokenId) showTokens(row, tk);
    showList(row, vc.tokens);
  } catch (err) { $("#error").textContent = err.message; }
}, 90);

// The typed text's tokens, the first (the one that counts) highlighted; when that token is not exactly the text
// (several tokens, or part of a character) the server's warning says which token is used.
function showTokens(row, read) {
  const box = $(".toks", row), tokens = read.tokens;
  box.replaceChildren(...tokens.map((t, i) => tokenChip(t, i === 0 ? "first" : "rest")));
  if (!tokens.length) return;
  if (read.warning) {
    const warn = document.createElement("span");
    warn.className = "warn"; warn.textContent = `⚠ ${read.warning}`;
    box.append(warn);
  } else {
    const note = document.createElement("span");
    note.textContent = " one token";
    box.append(note);
  }
  row.dataset.first = tokens[0].id;
}

function showList(row, tokens) {
  const list = $(".sugg", row), input = $(".cont", row);
  list.replaceChildren(...tokens.map((t, i) => {
    const li = tokenChipItem(t);
    li.id = `${list.id}-${i}`;
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pick(row, t); });
    return li;
  }));
  list._tokens = tokens;
  row.dataset.active = "-1";
  list.hidden = tokens.length === 0;
  input.setAttribute("aria-expanded", String(!list.hidden));
  input.removeAttribute("aria-activedescendant");
}
function tokenChipItem(t) {
  const li = document.createElement("li");
  li.setAttribute("role", "option"); li.setAttribute("aria-selected", "false");
  visible(t.text, li);
  return li;
}
function closeList(row) {
  $(".sugg", row).hidden = true;
  $(".cont", row).setAttribute("aria-expanded", "false");
  row.dataset.active = "-1";
}
function pick(row, tok) {
  const input = $(".cont", row);
  input.value = tok.text; // a text input drops line breaks: the token's own text is kept apart and sent
  row.dataset.tokenId = tok.id;
  row.dataset.tokenText = tok.text;
  row.dataset.first = tok.id;
  closeList(row);
  const box = $(".toks", row);
  const note = document.createElement("span");
  note.textContent = " picked from the vocabulary";
  box.replaceChildren(tokenChip(tok, "first"), note);
  updateTotal();
}
function comboKeys(e, row) {
  const list = $(".sugg", row), items = [...list.children];
  let active = parseInt(row.dataset.active, 10);
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    if (list.hidden || !items.length) return;
    e.preventDefault();
    active = e.key === "ArrowDown" ? Math.min(active + 1, items.length - 1) : Math.max(active - 1, 0);
  } else if (e.key === "Enter" && !list.hidden && active >= 0) {
    e.preventDefault();
    pick(row, list._tokens[active]);
    $(".prob", row).focus();
    return;
  } else if (e.key === "Escape" && !list.hidden) {
    e.preventDefault(); closeList(row); return;
  } else { return; }
  row.dataset.active = String(active);
  items.forEach((li, i) => li.setAttribute("aria-selected", String(i === active)));
  $(".cont", row).setAttribute("aria-activedescendant", items[active].id);
  items[active].scrollIntoView({ block: "nearest" });
}

// Live total; over 100% disables submitting (the server refuses it too).
function updateTotal() {
  let sum = 0, bad = false;
  for (const row of $("#rows").children) {
    const input = $(".prob", row), raw = input.value;
    const v = raw.trim() === "" ? 0 : tenths(raw);
    input.classList.toggle("bad", v === null);
    if (v === null) bad = true; else sum += v;
  }
  const total = $("#total"), rest = $("#rest").selectedOptions[0].textContent;
  total.classList.toggle("over", sum > 1000);
  if (sum > 1000) total.textContent = `Named ${(sum / 10).toFixed(1)}%: over 100%, lower some probabilities.`;
  else total.textContent = `Named ${(sum / 10).toFixed(1)}% · the other ${((1000 - sum) / 10).toFixed(1)}% goes to every other token ${rest}.`;
  $("#submit").disabled = sum > 1000 || bad;
  if (bad) total.textContent += " A probability is not a number between 0.1 and 100.";
  return { sum, bad };
}

function collect() {
  const cands = [];
  for (const row of $("#rows").children) {
    const picked = row.dataset.tokenId !== undefined;
    const text = picked ? row.dataset.tokenText : typedText(row), raw = $(".prob", row).value;
    if (!text && !raw.trim()) continue;
    if (!text) throw new Error("A candidate has a probability but no text.");
    const v = tenths(raw);
    if (v === null) throw new Error(`Give “${text}” a probability between 0.1 and 100 (percent).`);
    const c = { text, p: v / 1000 };
    if (picked) c.token_id = parseInt(row.dataset.tokenId, 10);
    cands.push(c);
  }
  if (!cands.length) throw new Error("Type at least one continuation and its probability.");
  return cands;
}

// --- rounds --------------------------------------------------------------------------------------------------------
async function refreshMe() {
  me = await api("/api/me");
  $("#suite").textContent = me.suite; $("#who").textContent = me.name;
  const pr = me.progress.practice, se = me.progress.sealed;
  $("#prog-practice").textContent = `${pr.answered}/${pr.total}`;
  $("#prog-sealed").textContent = `${se.answered}/${se.total}`;
  $("#running").textContent = pr.answered ? `practice: mean KL ${pr.mean_kl_nats.toFixed(3)} nats, mean CE ${pr.mean_ce_nats.toFixed(3)} nats` : "";
}

function setSplit(s) {
  split = s;
  localStorage.setItem("logitpred-split", s);
  for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-pressed", String(b.dataset.split === s));
  $("#round-note").textContent = s === "practice"
    ? "Practice round: after each answer you see the target's real top 10 and your scores."
    : `Sealed round: no feedback, each prompt is answered once; at most ${me.sealed_per_minute} answers a minute.`;
}

async function loadNext() {
  const data = await api(`/api/next?split=${split}`);
  $("#result").hidden = true; $("#result").replaceChildren(); $("#after").hidden = true; $("#error").textContent = "";
  if (data.done) {
    current = null;
    $("#task").hidden = true;
    const other = split === "practice" ? "sealed" : "practice";
    showResult([`All ${data.total} ${split} prompts are answered.`, `Switch to the ${other} round above, or log out.`]);
    return;
  }
  current = data.prompt;
  $("#task").hidden = false;
  $("#prompt-pos").textContent = `${data.index + 1} of ${data.total} (${split})`;
  const box = $("#prompt");
  box.replaceChildren(...visible(current.text, document.createElement("span")).childNodes);
  const end = document.createElement("span");
  end.className = "end"; end.textContent = "▮"; end.title = "end of the prompt"; end.setAttribute("aria-label", "end of prompt");
  box.append(end);
  box.scrollTop = box.scrollHeight;
  $("#rows").replaceChildren();
  addRow();
}

function showResult(lines, table) {
  const res = $("#result");
  res.replaceChildren(...lines.map((l) => { const p = document.createElement("p"); p.append(l); return p; }));
  if (table) res.append(table);
  res.hidden = false;
}

function feedbackTable(fb) {
  const t = document.createElement("table"); t.className = "data";
  t.createCaption().textContent = "The target's top 10 next tokens";
  const head = t.createTHead().insertRow();
  for (const h of ["#", "token", "target", "you"]) { const th = document.createElement("th"); th.textContent = h; head.append(th); }
  const body = t.createTBody();
  fb.top.forEach((tok, i) => {
    const r = body.insertRow();
    if (tok.id === fb.realized.id) r.className = "realized";
    r.insertCell().textContent = String(i + 1);
    r.insertCell().append(tokenChip(tok, "first"));
    const a = r.insertCell(); a.className = "num"; a.textContent = pct(tok.p);
    const b = r.insertCell(); b.className = "num"; b.textContent = pct(tok.yours);
  });
  return t;
}

async function submit(e) {
  e.preventDefault();
  if (busy || !current) return;
  $("#error").textContent = "";
  const { sum, bad } = updateTotal();
  if (sum > 1000 || bad) { $("#error").textContent = "Fix the probabilities first: they must add up to at most 100%."; return; }
  let cands;
  try { cands = collect(); } catch (err) { $("#error").textContent = err.message; return; }
  busy = true; $("#submit").disabled = true;
  try {
    const res = await api("/api/answer", { method: "POST", body: JSON.stringify(
      { prompt_id: current.id, mode: mode(), rest: $("#rest").value, candidates: cands }) });
    $("#task").hidden = true;
    const yours = document.createElement("span");
    yours.append("Your answer: ");
    for (const c of res.candidates) yours.append(tokenChip({ id: c.token_id, text: c.token, raw: "" }, "first"), ` ${pct(c.p)} `);
    yours.append(`· the rest by ${res.rest}.`);
    const warned = res.candidates.filter((c) => c.warning).map((c) => `⚠ ${c.warning}`);
    if (res.feedback) {
      const fb = res.feedback, run = res.running;
      const real = document.createElement("span");
      real.append("The text really went on with ", tokenChip(fb.realized, "first"),
        ` (target ${pct(fb.realized.p)}, you ${pct(fb.realized.yours)}).`);
      showResult([yours, ...warned, `Saved. Your KL(target ‖ you): ${fb.kl_nats.toFixed(3)} nats · your cross-entropy on the real next token: ${fb.ce_nats.toFixed(3)} nats (the target's own: ${fb.target_ce_nats.toFixed(3)}).`,
        real, `Running practice score: ${run.answered} answered, mean KL ${run.mean_kl_nats.toFixed(3)} nats, mean CE ${run.mean_ce_nats.toFixed(3)} nats.`],
      feedbackTable(fb));
    } else {
      showResult([`Saved (sealed answer ${res.answered} of ${res.total}; no feedback in the sealed round).`, yours, ...warned]);
    }
    await refreshMe();
    $("#after").hidden = false;
    $("#next").focus();
  } catch (err) {
    $("#error").textContent = err.message;
  } finally { busy = false; updateTotal(); }
}

// --- wiring --------------------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", async () => {
  $("#answer").addEventListener("submit", submit);
  $("#add").addEventListener("click", () => addRow());
  $("#rest").addEventListener("change", updateTotal);
  $("#next").addEventListener("click", () => loadNext().catch((err) => { $("#error").textContent = err.message; }));
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => {
      if (mode() === "quick") [...$("#rows").children].slice(1).forEach((row) => row.remove());
      relabel(); updateTotal();
    });
  }
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", async () => { setSplit(b.dataset.split); await loadNext(); });
  }
  $("#logout").addEventListener("click", async () => { await api("/api/logout", { method: "POST", body: "{}" }); location.reload(); });
  document.addEventListener("keydown", (e) => {
    if (e.altKey && (e.key === "a" || e.key === "A") && !$("#task").hidden) { e.preventDefault(); addRow(); }
  });
  try {
    await refreshMe();
    const saved = localStorage.getItem("logitpred-split");
    const pr = me.progress.practice;
    setSplit(saved === "sealed" || saved === "practice" ? saved : (pr.answered < pr.total ? "practice" : "sealed"));
    await loadNext();
  } catch (err) { $("#error").textContent = err.message; }
});
