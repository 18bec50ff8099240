// The trajectory mode of the human form (a trajectory suite; app.py serves this page instead of form.html): the
// prompt and one whole continuation; the participant says how likely the target is to continue exactly so, as
// log10 P on a slider from 1 in 10^12 to 1 in 10. Practice answers show the true probability and the error in
// orders of magnitude; sealed answers show nothing of the truth. `me`, `$`, `api`, `visible`: common.js.
"use strict";

let split = "practice", current = null, busy = false;
const KIND = {
  realized: "how the text really went on",
  given: "a phrase from the organiser's list, which may or may not be likely here",
};

// "1 in N" for log10 P = x: N to 2 significant digits, written out below a million (as trajectory.py's one_in).
function oneIn(x) {
  const n = Math.pow(10, -x);
  if (n < 1e6) return `1 in ${Number(n.toPrecision(2)).toLocaleString("en-US")}`;
  const [m, e] = n.toExponential(1).split("e");
  return `1 in ${m} × 10^${parseInt(e, 10)}`;
}
const signed = (x, digits = 2) => (x > 0 ? "+" : x < 0 ? "-" : "±") + Math.abs(x).toFixed(digits);

// --- the answer ----------------------------------------------------------------------------------------------------
function readValue(from) {
  const raw = from === "num" ? $("#lp-num").value : $("#lp").value;
  const x = parseFloat(raw);
  return Number.isFinite(x) && x >= -12 && x <= -1 ? x : null;
}
function show(x, from) {
  if (x === null) {
    $("#lp-out").textContent = "Give log10 P between -12 (1 in 10^12) and -1 (1 in 10).";
    $("#submit").disabled = true;
    return;
  }
  if (from !== "range") $("#lp").value = String(x);
  if (from !== "num") $("#lp-num").value = x.toFixed(1);
  $("#lp").setAttribute("aria-valuetext", `${oneIn(x)} (log10 P ${x.toFixed(1)})`);
  $("#lp-out").textContent = `${oneIn(x)}`;
  $("#submit").disabled = false;
}

// --- rounds --------------------------------------------------------------------------------------------------------
async function refreshMe() {
  me = await api("/api/me");
  $("#suite").textContent = me.suite; $("#who").textContent = me.name;
  const pr = me.progress.practice, se = me.progress.sealed;
  $("#prog-practice").textContent = `${pr.answered}/${pr.total}`;
  $("#prog-sealed").textContent = `${se.answered}/${se.total}`;
  $("#running").textContent = pr.answered
    ? `practice: mean error ${pr.mean_abs_error_log10.toFixed(2)} orders of magnitude` : "";
}

function setSplit(s) {
  split = s;
  localStorage.setItem("logitpred-split", s);
  for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-pressed", String(b.dataset.split === s));
  $("#round-note").textContent = s === "practice"
    ? "Practice round: after each answer you see the true probability and how far off you were."
    : `Sealed round: no feedback, each question is answered once; at most ${me.sealed_per_minute} answers a minute.`;
}

function showResult(lines) {
  const res = $("#result");
  res.replaceChildren(...lines.map((l) => { const p = document.createElement("p"); p.append(l); return p; }));
  res.hidden = false;
}

async function loadNext() {
  const data = await api(`/api/trajectory/next?split=${split}`);
  $("#result").hidden = true; $("#result").replaceChildren(); $("#after").hidden = true; $("#error").textContent = "";
  if (data.done) {
    current = null;
    $("#task").hidden = true;
    const other = split === "practice" ? "sealed" : "practice";
    showResult([`All ${data.total} ${split} questions are answered.`, `Switch to the ${other} round above, or log out.`]);
    return;
  }
  current = data.question;
  $("#task").hidden = false;
  $("#question-pos").textContent = `${data.index + 1} of ${data.total} (${split})`;
  $("#cont-kind").textContent = `${KIND[current.kind] || current.kind}; ${current.n_tokens} token${current.n_tokens === 1 ? "" : "s"}`;
  const box = $("#prompt"), mark = document.createElement("mark");
  mark.className = "cont-text";
  visible(current.continuation, mark);
  box.replaceChildren(...visible(current.prompt, document.createElement("span")).childNodes, mark);
  box.scrollTop = box.scrollHeight;
  $("#lp").value = "-6"; // every question starts from the middle of the scale, not from the last answer
  show(-6, null);
  $("#lp").focus();
}

async function submit(e) {
  e.preventDefault();
  if (busy || !current) return;
  $("#error").textContent = "";
  const x = readValue("num") ?? readValue("range");
  if (x === null) { $("#error").textContent = "Give log10 P between -12 and -1 first."; return; }
  busy = true; $("#submit").disabled = true;
  try {
    const res = await api("/api/trajectory/answer", { method: "POST",
      body: JSON.stringify({ continuation_id: current.continuation_id, log10prob: x }) });
    $("#task").hidden = true;
    const yours = `Your answer: ${res.one_in} (log10 P ${res.log10prob.toFixed(2)}).`;
    if (res.feedback) {
      const fb = res.feedback, run = res.running;
      const how = fb.direction === "over" ? "you over-estimated it" : fb.direction === "under" ? "you under-estimated it" : "exact";
      const scale = fb.off_scale ? " (beyond the slider's scale)" : "";
      showResult([yours,
        `True probability: ${fb.true_one_in} (log10 P ${fb.true_log10prob.toFixed(2)})${scale}.`,
        `Your error: ${signed(fb.error_log10)} orders of magnitude: ${how}${fb.within_10x ? ", within 10x" : ""}.`,
        `Running practice score: ${run.answered} answered, mean error ${run.mean_abs_error_log10.toFixed(2)} orders of magnitude.`]);
    } else {
      showResult([`Saved (sealed answer ${res.answered} of ${res.total}; no feedback in the sealed round).`, yours]);
    }
    await refreshMe();
    $("#after").hidden = false;
    $("#next").focus();
  } catch (err) {
    $("#error").textContent = err.message;
  } finally { busy = false; $("#submit").disabled = false; }
}

// --- wiring --------------------------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", async () => {
  const ticks = $("#lp-ticks");
  for (let v = -12; v <= -1; v++) { const o = document.createElement("option"); o.value = String(v); ticks.append(o); }
  $("#answer").addEventListener("submit", submit);
  $("#lp").addEventListener("input", () => show(readValue("range"), "range"));
  $("#lp-num").addEventListener("input", () => show(readValue("num"), "num"));
  // Enter on the slider submits, as it does in the number field (a range input has no implicit submission)
  $("#lp").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); $("#answer").requestSubmit(); } });
  $("#next").addEventListener("click", () => loadNext().catch((err) => { $("#error").textContent = err.message; }));
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", async () => { setSplit(b.dataset.split); await loadNext(); });
  }
  $("#logout").addEventListener("click", async () => { await api("/api/logout", { method: "POST", body: "{}" }); location.reload(); });
  try {
    await refreshMe();
    const saved = localStorage.getItem("logitpred-split");
    const pr = me.progress.practice;
    setSplit(saved === "sealed" || saved === "practice" ? saved : (pr.answered < pr.total ? "practice" : "sealed"));
    await loadNext();
  } catch (err) { $("#error").textContent = err.message; }
});
