"""`logitpred rare build | show` on the real SmolLM2 with a small spec (two product distributions of 2 free positions
over 4 tokens, a suite distribution, a text and a token behaviour): exact values equal a direct per-input computation,
the record is committed and reused, bad specs and behaviours exit 2 naming what is wrong, and a failed build keeps
the previous record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()
SPEC = """version: 1
corpus: wiki
distributions:
  - {id: en, kind: product, prefix: "The word", tokens: english, positions: 2, size: 4}
  - {id: hx, kind: product, prefix: "The code is", tokens: hex, positions: 2, size: 3}
  - {id: tiny-p, kind: suite, suite: tiny, split: practice}
behaviours:
  - {id: swear, texts: [" damn", " hell"]}
  - {id: comma, token: 11}
reference: {tokens: 3, low: 1.0e-7, high: 1.0e-1}
"""


@pytest.fixture
def spec(tiny_suite, tmp_path):
    path = tmp_path / "rare.yaml"
    path.write_text(SPEC)
    return path


def _run(*args):
    return runner.invoke(app, ["rare", *args], env={"COLUMNS": "200"})


def test_rare_build_is_exact_and_committed(spec, target):
    from tasks.rare.reference import load_reference, make_distribution
    from tasks.rare.spec import read_spec

    r = _run("build", "--spec", str(spec))
    assert r.exit_code == 0, r.output
    s = read_spec(spec)
    rec = load_reference(s, target.identity.id)
    assert rec["commitment"] in r.output and len(rec["commitment"]) == 64
    rows = {(x["distribution"], x["behaviour"], x["temperature"]): x["p_exact"] for x in rec["rows"]}
    en = rec["distributions"]["en"]
    assert len(en["reference_tokens"]) == 3 and en["marginal_passes"] == 16
    assert en["passes"] == 16 + 16 + 32  # marginals, the text behaviour over the support and over the 32 inputs
    d = make_distribution(s.distribution("en"), target, "wiki")
    comma1 = comma0 = swear1 = 0.0
    argmax_mass: dict[int, float] = {}
    swear = [target.tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" damn", " hell")]
    for x, lp in d.enumerate():
        for row, w in zip(x.tolist(), np.exp(lp), strict=True):
            with torch.no_grad():
                z = torch.log_softmax(target.model(input_ids=torch.tensor([target.bos_ids + list(d.prefix) + row]))
                                      .logits[0, -1].double(), -1)
            comma1 += w * float(z[11].exp())
            comma0 += w * float(int(z.argmax()) == 11)
            argmax_mass[int(z.argmax())] = argmax_mass.get(int(z.argmax()), 0.0) + w
            swear1 += w * sum(float(z[m[0]].exp()) for m in swear if len(m) == 1)
    assert rows[("en", "token:11", 1)] == pytest.approx(comma1, rel=1e-4)
    assert rows[("en", "token:11", 0)] == pytest.approx(comma0, abs=1e-12)
    if all(len(m) == 1 for m in swear):
        assert rows[("en", "swear", 1)] == pytest.approx(swear1, rel=1e-4)
    ref = [rows[("en", f"token:{t}", 1)] for t in rec["distributions"]["en"]["reference_tokens"]]
    assert all(1e-7 <= p <= 1e-1 for p in ref)
    # temperature 0: tokens picked by their exact greedy probability, which is the mass of the inputs they win
    greedy = en["reference_tokens_greedy"]
    in_range = {t for t, p in argmax_mass.items() if 1e-7 <= p <= 1e-1 and t not in en["reference_tokens"] + [11]}
    assert greedy and set(greedy) <= in_range and len(greedy) == min(3, len(in_range))
    for t in greedy:
        assert rows[("en", f"token:{t}", 0)] == pytest.approx(argmax_mass[t], abs=1e-12)
        assert ("en", f"token:{t}", 1) not in rows or t in en["reference_tokens"]
    logp = __import__("tasks").load_suite("tiny").truth_split("practice")[1]
    assert rows[("tiny-p", "token:11", 1)] == pytest.approx(float(np.exp(logp[:, 11].astype(np.float64)).mean()))
    r2 = _run("build", "--spec", str(spec))  # the marginals are reused: same record
    assert r2.exit_code == 0 and load_reference(s, target.identity.id)["commitment"] == rec["commitment"]
    r3 = _run("show", "--spec", str(spec))
    assert r3.exit_code == 0 and rec["commitment"] in r3.output


@pytest.mark.parametrize("old, new, message", [
    ("tokens: english", "tokens: klingon", "'tokens' must be one of"),
    ("positions: 2, size: 4", "positions: 0, size: 4", "'positions' must be >= 1"),
    ("{id: comma, token: 11}", "{id: comma, token: 11, texts: [a]}", "exactly one of"),
    ('{id: swear, texts: [" damn", " hell"]}', '{id: glued, texts: ["ing"]}', "does not tokenize as itself"),
    ("positions: 2, size: 4", "positions: 6, size: 16", "more than the"),
    ("suite: tiny", "suite: nosuch", "nosuch"),
])
def test_bad_specs_exit_2_naming_the_problem(spec, target, old, new, message):
    """Each bad spec exits 2 with a message naming the problem, and a record built before is left as it was."""
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec

    assert _run("build", "--spec", str(spec)).exit_code == 0
    before = load_reference(read_spec(spec), target.identity.id)
    bad = spec.parent / "bad.yaml"
    bad.write_text(SPEC.replace(old, new))
    r = _run("build", "--spec", str(bad))
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert load_reference(read_spec(spec), target.identity.id) == before


def test_rare_questions_predict_and_score(spec, target, tmp_path, monkeypatch):
    """Questions show no probability of the target; a unigram predictor's answers equal its background exactly (its
    prediction does not depend on the input); a perfect file scores 0; bad lines are rejected by line."""
    import json

    from predictors import PredictorContext
    from tasks import load_suite
    from tasks.rare.questions import truth
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec

    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    assert _run("build", "--spec", str(spec)).exit_code == 0
    rec = load_reference(read_spec(spec), target.identity.id)
    r = _run("questions", "--spec", str(spec))
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert not any(k in x for x in lines for k in ("p_exact", "p_inputs", "logprob"))
    qs = [x for x in lines if "continuation_id" in x]
    assert {(q["prompt_id"], q["continuation_id"]) for q in qs} == set(truth(rec))
    assert {q["question"] for q in qs} == {"P_D(B)", "P(B|x)"}
    f = tmp_path / "unigram.jsonl"
    r = _run("predict", "-p", "unigram", "-o", str(f), "--spec", str(spec), "--suite", "tiny")
    assert r.exit_code == 0, r.output
    got = {(x["prompt_id"], x["continuation_id"]): x["logprob"] for x in map(json.loads, f.read_text().splitlines())}
    b = PredictorContext.from_suite(load_suite("tiny")).background
    assert got[("en", "token:11")] == pytest.approx(np.log(b[11]), abs=1e-9)
    assert got[("en/x3", "token:11")] == pytest.approx(np.log(b[11]), abs=1e-9)
    r = _run("score", str(f), "--spec", str(spec))
    assert r.exit_code == 0 and "P_D(B)" in r.output, r.output
    perfect = tmp_path / "perfect.jsonl"
    perfect.write_text("".join(json.dumps({"prompt_id": k[0], "continuation_id": k[1], "logprob": float(np.log(v))})
                               + "\n" for k, v in truth(rec).items()) + '{"prompt_id": "en", "continuation_id": "x"}\n')
    r = _run("score", str(perfect), "--spec", str(spec), "--name", "oracle")
    assert r.exit_code == 0 and "line" in r.output and "0.000 [0.000, 0.000]" in r.output, r.output


def test_rare_estimate_from_the_cli(spec, target, tmp_path, monkeypatch):
    """`rare estimate` runs an estimator within its budget, prints the exact value beside it and records the run;
    bad input exits 2 naming it."""
    from evals.records import read_runs
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec

    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    assert _run("build", "--spec", str(spec)).exit_code == 0
    rec = load_reference(read_spec(spec), target.identity.id)
    tok = rec["distributions"]["en"]["reference_tokens"][-1]
    r = _run("estimate", "--spec", str(spec), "-d", "en", "-b", f"token:{tok}", "-e", "naive", "--budget", "32")
    assert r.exit_code == 0, r.output
    assert "exact (reference set)" in r.output and "not a proof" in r.output
    run = [x for x in read_runs() if x.get("questions") == "rare-estimate"][-1]
    exact = next(x["p_exact"] for x in rec["rows"] if x["distribution"] == "en" and x["behaviour"] == f"token:{tok}"
                 and x["temperature"] == 1)
    assert run["exact"] == exact and run["estimate"]["passes"]["total"] <= 32 and run["estimate"]["budget"] == 32
    for args, message in ((["-d", "en", "-b", "nosuch"], "unknown behaviour"),
                          (["-d", "nosuch", "-b", "swear"], "unknown distribution"),
                          (["-d", "tiny-p", "-b", "swear"], "estimators take product"),
                          (["-d", "en", "-b", "swear", "--budget", "0"], "budget"),
                          (["-d", "en", "-b", "swear", "-e", "magic"], "unknown estimator")):
        r = _run("estimate", "--spec", str(spec), *args)
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (args, r.output)


def test_helper_distribution_needs_approval_and_is_exact(tiny_helper, target, tmp_path):
    """Prompts sampled from a helper: refused unapproved (exit 2 naming the opt-in), deterministic with the seed, and
    the reference value is the exact mean over the sampled prompts of the target's next-token probability."""
    from tasks.rare.reference import load_reference
    from tasks.rare.spec import read_spec

    path = tmp_path / "gen.yaml"
    path.write_text("""version: 1
corpus: wiki
distributions:
  - {id: gen, kind: helper, helper: tiny-helper, start: "The", tokens: 5, samples: 6, seed: 3}
behaviours:
  - {id: comma, token: 11}
reference: {tokens: 2, low: 1.0e-7, high: 1.0e-2}
""")
    r = _run("build", "--spec", str(path))
    assert r.exit_code == 2 and "--allow-unapproved" in " ".join(r.output.split()), r.output
    r = _run("build", "--spec", str(path), "--allow-unapproved")
    assert r.exit_code == 0, r.output
    rec = load_reference(read_spec(path), target.identity.id)
    prompts = rec["distributions"]["gen"]["inputs"]
    assert len(prompts) == 6 and rec["distributions"]["gen"]["passes"] == 6
    assert all(target.tokenizer.decode(p).startswith("The") for p in prompts)
    with torch.no_grad():
        want = np.mean([torch.softmax(target.model(input_ids=torch.tensor([target.bos_ids + p])).logits[0, -1]
                                      .double(), -1)[11].item() for p in prompts])
    got = next(x["p_exact"] for x in rec["rows"] if x["behaviour"] == "token:11" and x["temperature"] == 1)
    assert got == pytest.approx(want, rel=1e-4)
    first = rec["commitment"]
    assert _run("build", "--spec", str(path), "--allow-unapproved").exit_code == 0
    assert load_reference(read_spec(path), target.identity.id)["commitment"] == first  # same seed, same prompts
