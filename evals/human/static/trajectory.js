// The trajectory mode of the human form (a trajectory suite; app.py serves this page instead of form.html): the
// prompt and one whole continuation; the participant says how likely the target is to continue exactly so, as
// log10 P on a slider from 1 in 10^12 to 1 in 10. Practice answers show the true probability and the error in
// orders of magnitude; sealed answers show nothing of the truth.
// `me`, `$`, `api`, `visible`: common.js; the slider and the feedback lines: logscale.js.
"use strict";

let split = "practice", current = null, busy = false;
const KIND = {
  realized: "how the text really went on",
  given: "a phrase from the organiser's list, which may or may not be likely here",
};



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
      showResult([yours, ...feedbackLines(fb, run, "Running practice score")]);
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
  wireSlider(submit);
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
