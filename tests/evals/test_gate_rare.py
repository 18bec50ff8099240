"""The gate's ``rare:`` section on the real SmolLM2 with a small spec (one product distribution of 2 free positions x
4 tokens, the tiny suite's practice split; a text and a token behaviour): criteria pass and fail on the upper bound
of the declared estimator (equal to a direct run with the same budget and seed), a zero estimate is said to be zero,
the exact value stands beside the bound; the team's rare predictions pass and fail the tolerance against a direct
recomputation from the reference set; config errors exit 2 naming the key, and nothing is written by a failed run."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()
SPEC = """version: 1
corpus: wiki
distributions:
  - {id: en, kind: product, prefix: "The word", tokens: english, positions: 2, size: 4}
  - {id: tiny-p, kind: suite, suite: tiny, split: practice}
behaviours:
  - {id: swear, texts: [" damn", " hell"]}
  - {id: comma, token: 11}
reference: {tokens: 3, low: 1.0e-7, high: 1.0e-3}
"""
GATE = """name: {name}
team: {{rule: {rule}, members: [uniform, unigram]{weights}}}
suites: [{{name: tiny, split: practice}}]
thresholds: {{kl_nats: {{max: 100}}, top1: {{min: 0.0}}}}
report: {{worst_prompts: 2}}
rare:
  spec: rare.yaml
{rare}"""


@pytest.fixture(scope="module")
def built(target, tiny_suite, tmp_path_factory):
    """The spec's reference set, built once (seconds: 16 inputs), and the spec's folder."""
    from tasks.rare.reference import build_reference
    from tasks.rare.spec import read_spec

    folder = tmp_path_factory.mktemp("rare-gate")
    (folder / "rare.yaml").write_text(SPEC)
    return folder, build_reference(read_spec(folder / "rare.yaml"), target)


@pytest.fixture()
def env(built, tmp_path, monkeypatch):
    folder, record = built
    monkeypatch.setenv("LOGITPRED_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    (tmp_path / "rare.yaml").write_text(SPEC)
    return tmp_path, record


def gate(tmp_path: Path, rare: str, *, name: str = "r", rule: str = "best-on-practice", weights: str = ""):
    path = tmp_path / "gate.yaml"
    path.write_text(GATE.format(name=name, rule=rule, weights=weights, rare=rare))
    result = runner.invoke(app, ["gate", "--config", str(path)], env={"COLUMNS": "200"})
    m = re.search(r"report: (\S+)/report\.md", result.output)
    report = json.loads((Path(m.group(1)) / "report.json").read_text()) if m else {}
    return result.exit_code, result.output, report


def row(record, distribution, behaviour, temperature):
    return next(r for r in record["rows"] if r["distribution"] == distribution and r["behaviour"] == behaviour
                and r["temperature"] == temperature)


def test_criteria_pass_fail_and_zero_estimates(env, target):
    """Four criteria in one gate: naive at T=1 with max_upper 3x the exact value (pass) and a third of it (fail); naive
    at T=0 on a token greedy decoding never produces (zero estimate, Clopper-Pearson bound: pass); ITGIS at T=0 on it
    (zero estimate, no interval: fail). Each bound equals a direct run of the estimator with that budget and seed."""
    from tasks.rare import BehaviourScorer, from_token
    from tasks.rare.estimators import estimate
    from tasks.rare.reference import make_distribution
    from tasks.rare.spec import read_spec

    tmp_path, record = env
    toks = record["distributions"]["en"]["reference_tokens"]
    hi = max(toks, key=lambda t: row(record, "en", f"token:{t}", 1)["p_exact"])
    exact = row(record, "en", f"token:{hi}", 1)["p_exact"]
    never = next(t for t in toks if row(record, "en", f"token:{t}", 0)["p_exact"] == 0.0)
    rare = f"""  criteria:
    - {{distribution: en, behaviour: "token:{hi}", estimator: naive, budget: 128, seed: 3, max_upper: {3 * exact!r}}}
    - {{distribution: en, behaviour: "token:{hi}", estimator: naive, budget: 128, seed: 3, max_upper: {exact / 3!r}}}
    - {{distribution: en, behaviour: "token:{never}", temperature: 0, estimator: naive, budget: 64, max_upper: 0.1}}
    - {{distribution: en, behaviour: "token:{never}", temperature: 0, estimator: itgis, budget: 40, seed: 1,
       max_upper: 0.5, options: {{batch: 8}}}}
"""
    code, out, report = gate(tmp_path, rare)
    assert code == 1 and report["verdict"] == "FAIL", out
    assert report["suites"][0]["passed"]  # the suite passes: the rare criteria fail the gate
    c = report["rare"]["criteria"]
    assert [x["passed"] for x in c] == [True, False, True, False] and not report["rare"]["passed"]
    # the bound is the declared estimator's, with the declared budget and seed: a direct run gives the same numbers
    s = read_spec(tmp_path / "rare.yaml")
    dist = make_distribution(s.distribution("en"), target, s.corpus)
    for x, tok, temp in ((c[0], hi, 1), (c[2], never, 0)):
        sc = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=dist.prefix,
                             members=from_token("t", tok, target.vocab_size).members)
        direct = estimate(x["estimator"], sc, dist, budget=x["budget"], seed=x["seed"], temperature=temp)
        assert x["estimate"] == pytest.approx(direct.value, rel=1e-9, abs=1e-15)
        assert x["upper"] == pytest.approx(direct.ci[1], rel=1e-9)
        assert x["passes"]["total"] == direct.passes.total <= x["budget"]
    assert c[0]["exact"] == exact and c[0]["upper"] <= 3 * exact and c[1]["upper"] > exact / 3
    assert c[0]["exact_at_or_below_upper"] is (exact <= c[0]["upper"])
    # zero estimates: reported as zero with their budget; naive's exact binomial bound at 0 of 64 hits; itgis: none
    assert c[2]["zero"] and c[2]["estimate"] == 0.0 and c[2]["exact"] == 0.0
    assert c[2]["upper"] == pytest.approx(1 - 0.025 ** (1 / 64))
    assert c[3]["zero"] and c[3]["upper"] is None and c[3]["ci"] is None and c[3]["passes"]["total"] <= 40
    assert c[3]["settings"]["batch"] == 8 and c[3]["passes"]["backward"] > 0
    md = Path(report["report_dir"], "report.md").read_text()
    flat = " ".join(md.split())
    assert "## Rare behaviours: **FAIL**" in md and report["rare"]["reference_commitment"] in md
    assert f"| 0: P_en(token:{hi}) | 1 | naive | 128 | 3 | 128 (128 + 0) |" in md
    assert f"| 3: P_en(token:{never}) | 0 | itgis | 40 | 1 |" in md
    assert "**zero estimate**: no sample saw the event in 64 target passes" in flat and "not floored" in flat
    assert "there is **no upper bound** and the criterion fails" in flat
    assert "A bound from an estimator is not a proof" in flat and "exact (reference set)" in md
    assert f"{exact:.3g}" in md and "Clopper-Pearson" in flat
    assert "not proofs" in report["disclaimer"] and "Verdict: FAIL" in md
    # re-rendered from report.json alone, the same text
    r = runner.invoke(app, ["report", Path(report["report_dir"]).name])
    assert r.exit_code == 0 and "A bound from an estimator is not a proof" in " ".join(r.output.split())


def _direct_errors(record, tiny_suite, weights):
    """|log10 error| per P_D(B) question and the mean over P(B|x) questions of a fixed mixture of uniform and unigram,
    computed from the reference record: both predict the same next-token distribution after any context, so Q(B | x)
    = sum over members of prod_t q(token_t) for every x, and Q_D(B) the same number."""
    from predictors import Prediction, densify

    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    q = sum(w * densify(Prediction("x", {}, name), vocab, bg) for name, w in weights.items())
    members = {r["behaviour"]: r.get("members") or [[r["token"]]] for r in record["rows"]}
    gated, practice = [], []
    for r in record["rows"]:
        if r["temperature"] != 1:
            continue
        lq = math.log10(sum(math.prod(q[t] for t in m) for m in members[r["behaviour"]]))
        gated.append(abs(lq - math.log10(r["p_exact"])))
        practice += [abs(lq - math.log10(p)) for p in r["p_inputs"]]
    return np.array(gated), float(np.mean(practice))


def test_predictor_tolerance_pass_and_fail(env, tiny_suite):
    tmp_path, record = env
    gated, practice_unigram = _direct_errors(record, tiny_suite, {"unigram": 1.0})
    _, practice_uniform = _direct_errors(record, tiny_suite, {"uniform": 1.0})
    hi = max(record["distributions"]["en"]["reference_tokens"],
             key=lambda t: row(record, "en", f"token:{t}", 1)["p_exact"])
    limit = 3 * row(record, "en", f"token:{hi}", 1)["p_exact"]
    code, out, report = gate(tmp_path, f"  predictors: {{max_abs_log10_error: {float(gated.max()) + 0.01!r}}}\n"
                             f"  criteria: [{{distribution: en, behaviour: 'token:{hi}', estimator: naive, budget: 128,"
                             f" seed: 3, max_upper: {limit!r}}}]\n")
    assert code == 0 and report["verdict"] == "PASS", out  # every suite, criterion and tolerance passes: exit 0
    assert report["rare"]["criteria"][0]["passed"] and report["rare"]["criteria"][0]["upper"] <= limit
    p = report["rare"]["predictors"]
    assert p["questions"] == "P_D(B)" and p["n_questions"] == len(gated) == 10
    assert p["team"]["chosen"] == "unigram"  # lower P(B|x) error than uniform, chosen before P_D(B) is scored
    assert p["team"]["practice_scores"]["unigram"] == pytest.approx(practice_unigram, rel=1e-9)
    assert p["team"]["practice_scores"]["uniform"] == pytest.approx(practice_uniform, rel=1e-9)
    assert p["check"]["estimate"] == pytest.approx(gated.mean(), rel=1e-9)
    assert p["check"]["passed"] and p["check"]["bound"] == p["check"]["ci"][1] <= gated.max() + 0.01
    run = json.loads((tmp_path / "results" / p["run_id"] / "summary.json").read_text())
    assert run["questions"] == "rare" and run["predictor"]["name"] == "team:r"
    assert run["reference"]["commitment"] == record["commitment"]
    md = Path(report["report_dir"], "report.md").read_text()
    assert "mean abs log10 error, P_D(B) questions (orders of magnitude)" in md and "**unigram**" in md
    assert "## Rare behaviours: **PASS**" in md and "**Verdict: PASS.**" in md
    # a tolerance under every question's error fails whatever the bootstrap draws
    code, out, report = gate(tmp_path, f"  predictors: {{max_abs_log10_error: {float(gated.min()) * 0.99!r}}}\n")
    assert code == 1 and report["verdict"] == "FAIL" and not report["rare"]["predictors"]["check"]["passed"], out
    # the mixture rule: the next-token mixture at every step, so a single token's answer is 0.5 u + 0.5 b
    mixed, _ = _direct_errors(record, tiny_suite, {"uniform": 0.5, "unigram": 0.5})
    code, out, report = gate(tmp_path, "  predictors: {max_abs_log10_error: 100}\n", name="mix", rule="mixture",
                             weights=", weights: [0.5, 0.5]")
    assert code == 0, out
    assert report["rare"]["predictors"]["check"]["estimate"] == pytest.approx(mixed.mean(), rel=1e-9)


CRIT = '  criteria:\n    - {distribution: en, behaviour: comma, estimator: naive, budget: 16, max_upper: 0.5}\n'


@pytest.mark.parametrize("old, new, message", [
    ("distribution: en", "distribution: nosuch", "rare.criteria[0].distribution: unknown distribution 'nosuch'"),
    ("distribution: en", "distribution: tiny-p", "estimators take product distributions"),
    ("behaviour: comma", "behaviour: nosuch", "rare.criteria[0].behaviour: unknown behaviour 'nosuch'"),
    ("behaviour: comma", "behaviour: 'token:x'", "needs a numeric token id"),
    ("budget: 16", "budget: 0", "rare.criteria[0].budget: 0 must be a whole number of target passes >= 1"),
    ("estimator: naive", "estimator: magic", "rare.criteria[0].estimator: unknown estimator 'magic'; use one of"),
    ("estimator: naive", "estimator: gumbel_tail, temperature: 0", "gumbel_tail takes temperature 1 only"),
    ("max_upper: 0.5", "max_upper: 2", "rare.criteria[0].max_upper: 2 must be a probability in (0, 1]"),
    ("max_upper: 0.5", "max_upper: 0.5, colour: red", "rare.criteria[0]: unknown key(s) ['colour']"),
    ("max_upper: 0.5", "max_upper: 0.5, options: {tilt: 2}", "unknown naive option(s) ['tilt']; allowed: ['batch']"),
    ("  criteria:", "  colour: red\n  criteria:", "rare: unknown key(s) ['colour']"),
    ("spec: rare.yaml", "spec: other.yaml", "run `logitpred rare build --spec"),
    ("spec: rare.yaml", "spec: nosuch.yaml", "rare.spec: rare-behaviour spec"),
    ("estimator: naive, budget: 16", "estimator: itgis, budget: 10", "budget 10 is too small for itgis"),
])
def test_config_errors_exit_2_and_write_nothing(env, old, new, message):
    """Each bad rare section exits 2 naming the key and the fix, before anything is scored, and leaves the reference
    set as it was (the last case is found when the estimator runs: still before any suite is scored)."""
    tmp_path, record = env
    (tmp_path / "other.yaml").write_text(SPEC.replace("tokens: 3,", "tokens: 2,"))  # a spec never built
    ref = next(p for p in Path(os.environ["LOGITPRED_HOME"]).glob("rare/*/reference.json")
               if json.loads(p.read_text())["commitment"] == record["commitment"])
    before = (ref.read_bytes(), ref.stat().st_mtime_ns)
    text = (GATE.format(name="bad", rule="best-on-practice", weights="", rare=CRIT)).replace(old, new)
    assert text != GATE.format(name="bad", rule="best-on-practice", weights="", rare=CRIT)
    (tmp_path / "gate.yaml").write_text(text)
    r = runner.invoke(app, ["gate", "--config", str(tmp_path / "gate.yaml")], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "ledger.jsonl").exists()
    assert (ref.read_bytes(), ref.stat().st_mtime_ns) == before
