"""`logitpred suite build NAME --from-search RESULTS` on a real (tiny) search of the real SmolLM2: the found suite holds
exactly the distinct found prompts above the bar, whole sources per split, role shifted, the source run's sha256, the
behaviour's first token as the realized token, truth equal to a direct forward of the target, nothing of the search in
what predictors see; a trajectory found suite carries o as its realized continuation; bad input exits 2."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evals.cli import app

runner = CliRunner()
BEHAVIOURS = '{"id": "paris", "text": " Paris"}\n{"id": "rome", "text": " Rome is"}\n'
SEARCH = ["--prefix", "The capital city is", "--free", "2", "--method", "random", "--lambda", "0,1", "--budget",
          "12", "--seed", "0", "-O", "search_width=4"]
BAR = "-60"  # random search's prompts are implausible (docs/search.md): a low bar keeps them for the test


def run_search(folder: Path, tmp: Path) -> Path:
    """A real tiny search (random method, 2 behaviours, λ 0 and 1, 12 passes per run) into ``folder``."""
    (tmp / "behaviours.jsonl").write_text(BEHAVIOURS)
    res = runner.invoke(app, ["search", "--behaviours", str(tmp / "behaviours.jsonl"), *SEARCH, "--out", str(folder)])
    assert res.exit_code == 0, res.output
    return folder


@pytest.fixture(scope="module")
def search_dir(target, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("found-search")
    return run_search(tmp / "run", tmp)


def build(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, ["suite", "build", *args], env={"COLUMNS": "200"})
    return res.exit_code, res.output


def records(folder: Path) -> list[dict]:
    return [json.loads(x) for n in ("best.jsonl", "frontier.jsonl") for x in (folder / n).read_text().splitlines()]


def test_found_suite_holds_the_found_prompts_with_their_truth(search_dir, target):
    from predictors import PredictorContext
    from tasks import load_suite

    code, out = build("found", "--from-search", str(search_dir), "--min-plausibility", BAR)
    assert code == 0, out
    s = load_suite("found")
    m = s.manifest
    assert m["role"] == "shifted" and m["found"]["min_plausibility"] == -60
    run_sha = hashlib.sha256((search_dir / "run.json").read_bytes()).hexdigest()
    assert [r["run_sha256"] for r in m["found"]["runs"]] == [run_sha]
    assert m["config"]["corpus"] == "wiki" and m["found"]["ordinary"] == "wiki"
    # exactly the distinct prompts above the bar that do not contain a behaviour's tokens
    recs = records(search_dir)
    members = [tuple(mm) for r in recs for mm in r["members"]]

    def shows(ids):
        return any(tuple(ids[i:i + len(mm)]) == mm for mm in members for i in range(len(ids)))

    want = {tuple(r["prompt_ids"]): r for r in reversed(recs) if r["ref_per_token"] >= -60 and
            not shows(r["prompt_ids"])}
    rows = {p.id: p for sp in ("practice", "sealed") for p in s.prompts(sp)}
    assert {p.token_ids for p in rows.values()} == set(want)
    assert sum(m["sizes"].values()) == len(want) and min(m["sizes"].values()) >= 1
    for p in rows.values():
        rec = want[p.token_ids]
        assert p.text == rec["prompt_text"] and p.next_token_id == rec["members"][0][0]
        assert list(target.tokenizer.encode(p.text, add_special_tokens=False)) == list(p.token_ids)
    # whole sources (search run, behaviour) per split
    sources = {sp: {p.source for p in s.prompts(sp)} for sp in ("practice", "sealed")}
    assert not sources["practice"] & sources["sealed"]
    # truth: the target's next-token distribution after the prompt (a direct forward, float16 storage tolerance)
    ids, logp, _ = s.truth_split("sealed")
    p = s.prompts("sealed")[0]
    with torch.no_grad():
        ref = torch.log_softmax(target.model(torch.tensor([[*target.bos_ids, *p.token_ids]])).logits[0, -1].double(),
                                -1).numpy()
    row = logp[ids.index(p.id)].astype(np.float64)
    assert float(np.sum(np.exp(ref) * (ref - row))) < 1e-3
    # predictors see prompt views only: nothing of the search's values
    views = PredictorContext.from_suite(s).practice_prompts()
    assert views and all(not hasattr(v, "log_p") and not hasattr(v, "ref_per_token") for v in views)
    line = json.loads((s.path / "practice.jsonl").read_text().splitlines()[0])
    assert not {"log_p", "ref_per_token", "lambda", "objective", "behaviour"} & set(line)
    prov = [json.loads(x) for x in (s.path / "found.jsonl").read_text().splitlines()]
    assert {r["id"] for r in prov} == set(rows) and all(r["run_sha256"] == run_sha for r in prov)
    # the same command again gives the same suite version
    code, out = build("found", "--from-search", str(search_dir), "--min-plausibility", BAR)
    assert code == 0 and load_suite("found").version == s.version


def test_trajectory_found_suite_asks_o_whole(search_dir):
    from tasks import load_suite

    code, out = build("found-t", "--from-search", str(search_dir), "--min-plausibility", BAR, "--continuation", "1")
    assert code == 0, out
    s = load_suite("found-t")
    assert s.manifest["trajectory"]["behaviours"]["count"] == 1 and "given" in \
        s.manifest["trajectory"]["questions"]["whole_continuation"]
    for p in s.prompts("practice") + s.prompts("sealed"):
        assert p.continuation_ids == (p.next_token_id,)
    code, out = build("found-t2", "--from-search", str(search_dir), "--min-plausibility", BAR, "--continuation", "3")
    assert code == 2 and "--continuation <= 1" in out  # " Paris" is one token


def test_bad_input_exits_2_naming_the_cause(search_dir, tmp_path):
    code, out = build("found-x", "--from-search", str(search_dir), "--min-plausibility", "1")
    assert code == 2 and "no found prompt" in out and "--min-plausibility" in out
    code, out = build("wiki", "--from-search", str(search_dir))
    assert code == 2 and "preset" in out
    code, out = build("found-x", "--from-search", str(tmp_path))
    assert code == 2 and "run.json" in out
    other = tmp_path / "other"
    shutil.copytree(search_dir, other)
    run = json.loads((other / "run.json").read_text())
    run["target"]["id"] = "someone-else"
    (other / "run.json").write_text(json.dumps(run))
    code, out = build("found-x", "--from-search", str(other), "--min-plausibility", BAR)
    assert code == 2 and "against target" in out and "someone-else" in out
    changed = tmp_path / "changed"
    shutil.copytree(search_dir, changed)
    with open(changed / "best.jsonl", "a") as f:
        f.write("\n")
    code, out = build("found-x", "--from-search", str(changed), "--min-plausibility", BAR)
    assert code == 2 and "changed since the search wrote it" in out
    code, out = build("found-x", "--min-plausibility", "-5")
    assert code == 2 and "--from-search" in out
