// Shared by the log-scale pages (trajectory.js: whole continuations; rare.js: rare behaviours): the answer is log10 P
// on a slider (and a number field) from 1 in 10^12 to 1 in 10, read out as "1 in N", and practice feedback in orders
// of magnitude. `$`: common.js.
"use strict";

// "1 in N" for log10 P = x: N to 2 significant digits, written out below a million (as trajectory.py's one_in).
function oneIn(x) {
  const n = Math.pow(10, -x);
  if (n < 1e6) return `1 in ${Number(n.toPrecision(2)).toLocaleString("en-US")}`;
  const [m, e] = n.toExponential(1).split("e");
  return `1 in ${m} × 10^${parseInt(e, 10)}`;
}
const signed = (x, digits = 2) => (x > 0 ? "+" : x < 0 ? "-" : "±") + Math.abs(x).toFixed(digits);

function readValue(from) {
  const x = parseFloat(from === "num" ? $("#lp-num").value : $("#lp").value);
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
  $("#lp-out").textContent = oneIn(x);
  $("#submit").disabled = false;
}

function showResult(lines) {
  const res = $("#result");
  res.replaceChildren(...lines.map((l) => { const p = document.createElement("p"); p.append(l); return p; }));
  res.hidden = false;
}

// The feedback lines of an answer with truth (`fb`, `run`: the server's feedback and running score).
function feedbackLines(fb, run, scoreLabel) {
  const how = fb.direction === "over" ? "you over-estimated it" : fb.direction === "under" ? "you under-estimated it" : "exact";
  const scale = fb.off_scale ? " (beyond the slider's scale)" : "";
  return [`True probability: ${fb.true_one_in} (log10 P ${fb.true_log10prob.toFixed(2)})${scale}.`,
    `Your error: ${signed(fb.error_log10)} orders of magnitude: ${how}${fb.within_10x ? ", within 10x" : ""}.`,
    `${scoreLabel}: ${run.answered} answered, mean error ${run.mean_abs_error_log10.toFixed(2)} orders of magnitude.`];
}

// Tick marks, the two inputs kept in step, and Enter on the slider submitting (a range input has no implicit
// submission), as the number field does.
function wireSlider(submit) {
  const ticks = $("#lp-ticks");
  for (let v = -12; v <= -1; v++) { const o = document.createElement("option"); o.value = String(v); ticks.append(o); }
  $("#answer").addEventListener("submit", submit);
  $("#lp").addEventListener("input", () => show(readValue("range"), "range"));
  $("#lp-num").addEventListener("input", () => show(readValue("num"), "num"));
  $("#lp").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); $("#answer").requestSubmit(); } });
}
