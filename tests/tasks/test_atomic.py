"""State survives ``kill -9``: real child processes are killed by SIGKILL (``LOGITPRED_KILL_AT``) at the meaningful
points of a suite rebuild, a truth recomputation, an index build and a run record, and what is left on disk is exactly
the old state or the new one; where truth is missing, the error's advice names the command that completes it.

The suite is small on purpose (a corpus of 16 real wiki lead sections, 2 + 2 prompts of at most 40 tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks import SuiteConfig, SuiteError, build_suite, load_suite, read_corpus

CHILD = """
import sys
from tasks import SuiteConfig, build_suite, load_suite, load_target, load_tokenizer
step, corpus, seed, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if step == "build":  # as `logitpred suite build atom --rebuild`
    tok, identity = load_tokenizer()
    suite = build_suite(SuiteConfig("atom", corpus, seed=seed, practice=2, sealed=2, heldout_fraction=0.5,
                                    max_doc_tokens=40, min_context=8), tok, identity, 49152)
else:  # as `logitpred truth --suite atom --rebuild --batch-size N`
    suite = load_suite("atom")
suite.compute_truth(load_target(), rebuild=True, batch_size=batch)
"""


def config(corpus: Path, seed: int) -> SuiteConfig:
    return SuiteConfig("atom", str(corpus), seed=seed, practice=2, sealed=2, heldout_fraction=0.5, max_doc_tokens=40,
                       min_context=8)


def killed(point: str, *args: str) -> None:
    """Run CHILD with ``args`` in a fresh process, killed by SIGKILL at ``point``."""
    env = {**os.environ, "LOGITPRED_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def home(data_home, tmp_path_factory):
    """A data dir of its own (the session's is restored after), with the corpus beside it."""
    path = tmp_path_factory.mktemp("atomic-home")
    corpus = path / "wiki16.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in read_corpus("wiki")[:16]))
    before = os.environ["LOGITPRED_HOME"]
    os.environ["LOGITPRED_HOME"] = str(path)
    yield path
    os.environ["LOGITPRED_HOME"] = before


@pytest.fixture(scope="module")
def states(home, target):
    """(old, new): version, commitment and truth record bytes of the suite built with seed 0 and with seed 1."""
    out = []
    for seed in (1, 0):  # seed 0 last: the old state is in place
        suite = build_suite(config(home / "wiki16.jsonl", seed), target.tokenizer, target.identity, target.vocab_size)
        suite.compute_truth(target)
        out.append({"version": suite.version, "commitment": suite.commitment,
                    "record": (suite.truth_dir / "truth.json").read_bytes(), "truth_dir": suite.truth_dir})
    assert out[0]["version"] != out[1]["version"]
    return out[1], out[0]


def restore_old(home, target, old, new):
    """Publish the old suite again with its truth (cached, or recomputed as it was) and drop the new version's truth."""
    import shutil

    suite = build_suite(config(home / "wiki16.jsonl", 0), target.tokenizer, target.identity, target.vocab_size)
    suite.compute_truth(target)
    if (suite.truth_dir / "truth.json").read_bytes() != old["record"]:  # replaced by a recomputation with batch 1
        suite.compute_truth(target, rebuild=True, batch_size=8)
    assert (suite.truth_dir / "truth.json").read_bytes() == old["record"]
    shutil.rmtree(new["truth_dir"], ignore_errors=True)


def assert_complete(suite, state):
    """Loads, hash checks pass for both splits, the commitment verifies and is the expected one."""
    assert suite.version == state["version"] and suite.has_truth()
    for split in ("practice", "sealed"):
        suite.truth_split(split)
    suite.verify_commitment()
    assert suite.commitment == state["commitment"]


@pytest.mark.parametrize("point", ["suite:before-link", "suite:after-link", "truth:after-practice",
                                   "truth:after-record"])
def test_kill_during_suite_rebuild_leaves_old_or_new(point, home, target, states):
    old, new = states
    restore_old(home, target, old, new)
    killed(point, "build", str(home / "wiki16.jsonl"), "1", "8")
    suite = load_suite("atom")
    if point == "suite:before-link":
        assert_complete(suite, old)
        assert (suite.truth_dir / "truth.json").read_bytes() == old["record"]
        return
    assert suite.version == new["version"]
    if point == "truth:after-record":
        assert_complete(suite, new)
        return
    # the new suite is published, its truth is not: every check says so and names the command that computes it
    assert not suite.has_truth() and suite.commitment is None
    advice = "run `logitpred truth --suite atom`"
    with pytest.raises(SuiteError, match=r"no truth for suite 'atom' \(sealed\): " + advice):
        suite.truth_split("sealed")
    with pytest.raises(SuiteError, match="no truth yet, so no sealed commitment: " + advice):
        suite.verify_commitment()
    load_suite("atom").compute_truth(target)  # what `logitpred truth --suite atom` does
    assert_complete(load_suite("atom"), new)


@pytest.mark.parametrize("point", ["truth:before-record", "truth:after-record"])
def test_kill_during_truth_recomputation_leaves_old_or_new(point, home, target, states):
    old, new = states
    restore_old(home, target, old, new)
    killed(point, "truth", str(home / "wiki16.jsonl"), "0", "1")
    suite = load_suite("atom")
    record = (suite.truth_dir / "truth.json").read_bytes()
    if point != "truth:after-record":
        assert record == old["record"]
        assert_complete(suite, old)
        return
    assert suite.version == old["version"] and suite.has_truth()
    for split in ("practice", "sealed"):
        suite.truth_split(split)
    suite.verify_commitment()  # the recomputed truth (batch size 1) with its own commitment, complete
    assert suite.commitment == json.loads(record)["commitment"]
    files = {f["file"] for f in json.loads(record)["files"].values()}
    superseded = {f["file"] for f in json.loads(old["record"])["files"].values()} - files
    assert {p.name for p in suite.truth_dir.glob("*.safetensors")} == files | superseded  # deleted after the commit


INDEX_CHILD = """
import sys
import numpy as np
from predictors.index import TrainingText, load_or_build
text = TrainingText([{"name": "t", "tokens": 4, "documents": 1, "sha256": "x"}], np.arange(4), np.array([0, 4]), 0, 0.1)
load_or_build("probe", {}, text, lambda t, step: {"a": np.arange(int(sys.argv[1]))}, stages=0, rebuild_hint="",
              provenance={}, rebuild=True)
"""


def test_kill_during_index_build_leaves_no_half_index(home):
    from predictors.index import TrainingText, index_dir, index_key, load_or_build

    text = TrainingText([{"name": "t", "tokens": 4, "documents": 1, "sha256": "x"}], np.arange(4), np.array([0, 4]),
                        0, 0.1)
    folder = index_dir("probe", index_key("probe", {}, text))
    for n, point in ((5, "index:before-manifest"), (5, "index:before-rename")):
        env = {**os.environ, "LOGITPRED_KILL_AT": point}
        assert subprocess.run([sys.executable, "-c", INDEX_CHILD, str(n)], env=env).returncode == -9
        assert not folder.exists()
    arrays, _ = load_or_build("probe", {}, text, lambda t, step: {"a": np.arange(3)}, stages=0, rebuild_hint="",
                              provenance={})
    assert arrays["a"].tolist() == [0, 1, 2]
    env = {**os.environ, "LOGITPRED_KILL_AT": "index:before-rename"}  # a rebuild killed: the old index stays
    assert subprocess.run([sys.executable, "-c", INDEX_CHILD, "7"], env=env).returncode == -9
    arrays, _ = load_or_build("probe", {}, text, lambda t, step: {"a": np.arange(9)}, stages=0, rebuild_hint="",
                              provenance={})
    assert arrays["a"].tolist() == [0, 1, 2]


RUN_CHILD = """
import sys
import pandas as pd
from evals.records import write_run
from pathlib import Path
write_run({"run_id": "r1", "created": "2026-01-01T00:00:00+00:00"}, pd.DataFrame({"kl": [1.0]}), root=Path(sys.argv[1]))
"""


def test_kill_while_writing_a_run_record_leaves_none(tmp_path):
    from evals.records import read_runs

    env = {**os.environ, "LOGITPRED_KILL_AT": "run:before-rename"}
    proc = subprocess.run([sys.executable, "-c", RUN_CHILD, str(tmp_path)], env=env)
    assert proc.returncode == -9 and not (tmp_path / "r1").exists() and read_runs(Path(tmp_path)) == []
    assert subprocess.run([sys.executable, "-c", RUN_CHILD, str(tmp_path)]).returncode == 0
    assert [r["run_id"] for r in read_runs(Path(tmp_path))] == ["r1"]


def test_unreadable_token_cache_is_rebuilt(home, target):
    from tasks.tokens import train_tokens

    corpus = str(home / "wiki16.jsonl")
    first = train_tokens(corpus, target.tokenizer, target.identity.tokenizer_sha256, heldout_fraction=0.5)
    (cache,) = [p for p in (home / "tokens").glob("wiki16-s0-h0.5-*.npz")]
    cache.write_bytes(cache.read_bytes()[:100])  # as a pre-atomic writer killed mid-write would leave it
    again = train_tokens(corpus, target.tokenizer, target.identity.tokenizer_sha256, heldout_fraction=0.5)
    assert np.array_equal(again.tokens, first.tokens) and again.doc_ids == first.doc_ids
    assert np.load(cache)["tokens"].size == first.tokens.size


def test_a_suite_folder_of_the_old_layout_is_swapped_for_the_link(home, target):
    import dataclasses

    from tasks.suite import suite_dir

    old = suite_dir("legacy")
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"format": "logitpred-suite/1", "config": {"name": "legacy"}}))
    with pytest.raises(SuiteError, match="older suites could show one prompt's hidden continuation in another"):
        load_suite("legacy")
    cfg = dataclasses.replace(config(home / "wiki16.jsonl", 0), name="legacy")
    suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    assert old.is_symlink() and load_suite("legacy").version == suite.version and len(suite.prompts("sealed")) == 2
    assert [p.name for p in (home / "suite-builds" / "legacy").iterdir()] == [old.resolve().name]
