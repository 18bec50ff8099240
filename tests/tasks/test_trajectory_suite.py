"""Trajectory suites (issue 12 parts 1-3): prompts cut with room for their realized continuation, continuation sets
(realized, sampled, given) with stable ids, chain-rule truth equal to next-token passes step by step, a commitment
over continuations and their truth, and what a split shows (never a sample; no next-token question whose answer a
shown continuation gives). Real SmolLM2, real wiki text, 3 + 3 prompts, M = 4, K = 2, two behaviours."""

import dataclasses
import hashlib
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest

from tasks import PRESETS, SuiteConfig, SuiteError, build_suite, leaks, load_suite, prompt_rows, read_corpus
from tasks.cuts import GUARD, guard, too_long, window_size
from tasks.tokens import encode_text

TINY_VERSION = "2-0b62c73bb904"  # the tiny preset's version before trajectory suites existed
M, K = 4, 2
BEHAVIOURS = '{"id": "then", "text": " and then"}\n{"id": "s", "text": "s of"}\n'


@pytest.fixture(scope="module")
def home(trajectory_home):
    """The session's trajectory home (``tests/conftest.py``: suite ``traj``, 3 + 3 wiki prompts, M = 4, K = 2, two
    behaviours) with its next-token truth and trajectories."""
    return trajectory_home


def _config(path, **changes):
    return dataclasses.replace(PRESETS["tiny"], **{"name": "traj", "practice": 3, "sealed": 3, "continuation": M,
                                                   "samples": K, "behaviours": str(path / "behaviours.jsonl"),
                                                   **changes})


@pytest.fixture(autouse=True)
def _in_home(request, monkeypatch):
    if "home" in request.fixturenames:
        monkeypatch.setenv("LOGITPRED_HOME", str(request.getfixturevalue("home")))


@pytest.fixture
def copy_home(home, tmp_path, monkeypatch):
    """A copy of ``home`` to tamper with (the suite link is relative, so it keeps pointing inside the copy)."""
    dest = tmp_path / "home"
    shutil.copytree(home, dest, symlinks=True)
    monkeypatch.setenv("LOGITPRED_HOME", str(dest))
    return dest


def _all(suite):
    return [p for s in ("practice", "sealed") for p in suite.prompts(s)]


def test_next_token_suites_keep_their_version(target, tmp_path, monkeypatch):
    """The tiny preset's version is what it was before trajectory suites; its rows and manifest gain nothing but the
    config's new fields at their defaults, and it asks next-token questions only."""
    from tasks.suite import version_config
    from tasks.trajectory import asked, next_token_questions, questions

    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path))
    suite = build_suite(PRESETS["tiny"], target.tokenizer, target.identity, target.vocab_size)
    assert suite.version == TINY_VERSION
    assert "continuation" not in version_config(PRESETS["tiny"]) and "trajectory" not in suite.manifest
    assert suite.manifest["config"]["continuation"] == 0 and suite.manifest["config"]["behaviours"] is None
    assert all(p.continuation_ids == () for p in _all(suite))
    assert "continuation_ids" not in (suite.path / "sealed.jsonl").read_text()
    assert asked(suite) == {"next_token": True, "whole_continuation": [], "step_wise": []}
    assert next_token_questions(suite, "sealed") == suite.prompts("sealed")
    lines = list(questions(suite, "sealed"))
    assert [set(q) for q in lines] == [{"prompt_id", "text", "token_ids"}] * 6


def test_realized_continuation_is_the_documents_next_tokens(home, target):
    suite = load_suite("traj")
    passages = {d.id: d.text for d in read_corpus("wiki")}
    prompts = _all(suite)
    assert len(prompts) == 6 and suite.manifest["trajectory"]["continuation"] == M
    offsets = {r["id"]: r["offset"] for s in ("practice", "sealed")
               for r in map(json.loads, (suite.path / f"{s}.jsonl").read_text().splitlines())}
    for p in prompts:
        ids = encode_text(target.tokenizer, passages[p.doc.rsplit("@", 1)[0]])
        at = p.cut - offsets[p.id]  # passage coordinates
        assert list(p.continuation_ids) == ids[at : at + M] and len(p.continuation_ids) == M
        assert p.continuation_ids[0] == p.next_token_id and list(p.token_ids) == ids[at - len(p.token_ids) : at]
        assert encode_text(target.tokenizer, p.text + p.continuation_text) == [*p.token_ids, *p.continuation_ids]
    stored = load_suite("traj")
    from tasks.trajectory import load_trajectories

    sealed = load_trajectories(stored).split("sealed")
    for p in stored.prompts("sealed"):
        c = sealed.continuations[sealed.index(f"{p.id}:r")]
        assert c.kind == "realized" and c.token_ids == p.continuation_ids


def test_no_prompt_shows_a_realized_continuation_of_another(home, target):
    suite = load_suite("traj")
    rows = {s: [json.loads(x) for x in (suite.path / f"{s}.jsonl").read_text().splitlines()]
            for s in ("practice", "sealed")}
    assert leaks(rows) == []
    flat = [r for s in rows for r in rows[s]]
    for p in flat:
        hidden = set(range(p["cut"], p["cut"] + len(p["continuation_ids"]) + 1))  # the continuation and the next
        for q in flat:
            if q is not p and q["source"] == p["source"]:
                assert not hidden & set(range(q["start"], q["cut"] + len(q["continuation_ids"])))
    # continuations longer than GUARD: the guard grows to M + 1, on real cuts and in the check
    assert guard(0) == guard(M) == GUARD and guard(40) == 41
    cfg = dataclasses.replace(_config(home), name="long-m", continuation=40, samples=0, behaviours=None)
    long_rows = prompt_rows(cfg, target.tokenizer)
    assert leaks(long_rows) == [] and all(len(r["continuation_ids"]) == 40 for s in long_rows
                                          for r in long_rows[s])

    def row(i, start, cut, m):
        return {"id": f"p{i}", "source": "a", "start": start, "cut": cut, "token_ids": [0] * (cut - start),
                "continuation_ids": [0] * m}

    assert leaks([row(0, 0, 20, 40), row(1, 20 + GUARD, 90, 40)]) == [
        "prompt p1 shows tokens [52, 90) of 'a': within 41 tokens from prompt p0's cut at 20"]
    assert leaks([row(0, 0, 20, 40), row(1, 61, 90, 40)]) == []


def test_ids_are_stable_across_rebuilds(home, target, tmp_path, monkeypatch):
    """Rebuilding the suite elsewhere gives the same version and ids; rebuilding its trajectories gives the same
    continuations (seeded samples), the same files and the same commitment; a valid cached set is reused."""
    from tasks.trajectory import build_trajectories, load_trajectories

    suite = load_suite("traj")
    first = load_trajectories(suite)
    ids = {s: [c.id for c in first.split(s).continuations if c.kind != "sampled"] for s in ("practice", "sealed")}
    for p in suite.prompts("sealed"):
        kinds = [c.id.removeprefix(p.id) for c in first.split("sealed").continuations if c.prompt_id == p.id]
        assert kinds[: 1 + K] == [":r", ":s0", ":s1"] and set(kinds[1 + K :]) <= {":g:then", ":g:s"}
    assert build_trajectories(suite, target) == first.record  # reused, not recomputed
    again = build_trajectories(suite, target, rebuild=True, batch_size=4)
    assert again["files"] == first.record["files"]
    assert again["trajectory_commitment"] == first.record["trajectory_commitment"]
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path))
    (tmp_path / "behaviours.jsonl").write_text(BEHAVIOURS)  # the same behaviours from another path: the same suite
    other = build_suite(_config(tmp_path), target.tokenizer, target.identity, target.vocab_size)
    assert other.version == suite.version
    assert [p.id for p in _all(other)] == [p.id for p in _all(suite)]
    from tasks.trajectory import shown_continuations

    for s in ("sealed", "practice"):
        shown = shown_continuations(other, s)
        assert [c.id for cs in shown.values() for c in cs] == ids[s]


def test_a_behaviour_merging_across_the_boundary_is_left_out_and_counted(home, target):
    from tasks.trajectory import load_trajectories

    suite = load_suite("traj")
    given = suite.manifest["trajectory"]["behaviours"]["given"]
    merged = sum(given[s]["by_behaviour"]["s"]["boundary_merge"] for s in given)
    kept = sum(given[s]["by_behaviour"]["s"]["kept"] for s in given)
    assert merged > 0 and kept > 0 and merged + kept == 6  # "s of" merges with some prompts' last word
    assert all(given[s]["by_behaviour"]["then"]["kept"] == 3 for s in given)
    trajectories = load_trajectories(suite)
    assert trajectories.record["given"] == given
    for s in ("practice", "sealed"):
        conts = trajectories.split(s).continuations
        assert given[s]["pairs"] == sum(c.kind == "given" for c in conts)
        assert given[s]["left_out"] == given[s]["by_behaviour"]["s"]["boundary_merge"]
        for p in suite.prompts(s):
            full = encode_text(target.tokenizer, p.text + "s of")
            fits = full[: len(p.token_ids)] == list(p.token_ids)
            stored = [c for c in conts if c.id == f"{p.id}:g:s"]
            assert bool(stored) == fits
            if fits:
                assert list(stored[0].token_ids) == full[len(p.token_ids) :] and stored[0].text == "s of"


def test_a_behaviour_fitting_no_prompt_is_an_error_naming_it_and_both_encodings(target, tmp_path, monkeypatch):
    """Every prompt of a corpus of " dog dog ..." ends with " dog"; "s are" makes " dogs are" after every one."""
    from tasks.corpora import is_heldout

    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    ids = [f"doc-{i}" for i in range(200)]
    held = [i for i in ids if is_heldout(i, seed=0, heldout_fraction=0.5)][:6]
    chosen = held + [i for i in ids if i not in held][:2]
    corpus = tmp_path / "dogs.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": "dog" + " dog" * 150}) + "\n" for i in chosen))
    beh = tmp_path / "b.jsonl"
    beh.write_text('{"id": "fine", "text": " barks"}\n{"id": "plural", "text": "s are"}\n')
    cfg = SuiteConfig("dogs", str(corpus), practice=3, sealed=3, heldout_fraction=0.5, continuation=M,
                      behaviours=str(beh))
    alone = encode_text(target.tokenizer, "s are")
    dog, dogs_are = encode_text(target.tokenizer, " dog"), encode_text(target.tokenizer, " dogs are")
    with pytest.raises(SuiteError) as e:
        build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    msg = str(e.value)
    assert "behaviour 'plural' ('s are') fits no prompt" in msg and f"alone it encodes to {alone}" in msg
    assert f"whose ids end {dog * 3}" in msg and f"encodes to ...{dog * 2 + dogs_are}" in msg
    assert "6 boundary_merge" in msg and not (tmp_path / "home" / "suites" / "dogs").exists()
    beh.write_text('{"id": "long", "text": " one two three four five six"}\n')
    with pytest.raises(SuiteError, match=r"behaviour 'long' .* fits no prompt: .*\(6 tokens; continuations hold "
                                         r"at most 4\).*6 longer_than_continuation"):
        build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    for text, message in (('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}', "line 2: behaviour id 'a' "
                                                                                  "repeats line 1"),
                          ('{"id": "a", "txt": "x"}', r"line 1: unknown key\(s\) \['txt'\]"),
                          ('{"id": "a b", "text": "x"}', "line 1: \"id\" must be"), ("", "no behaviours")):
        beh.write_text(text)
        with pytest.raises(SuiteError, match=message):
            build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)


def test_chain_rule_truth_equals_next_token_passes_step_by_step(home, target):
    """Per-step log-probabilities (stored float32) within 1e-4 of one plain forward pass per step, their sum exact in
    float64, and the full distributions of sampled continuations within the float16 storage tolerance."""
    from tasks.compute import direct_truth
    from tasks.quantize import STORED_ATOL, STORED_RTOL
    from tasks.trajectory import load_trajectories

    suite = load_suite("traj")
    prompts = {p.id: p for p in _all(suite)}
    trajectories = load_trajectories(suite)
    kinds = defaultdict(int)
    for split in ("sealed",):  # one split: a plain pass per step is slow (full logits at every position)
        t = trajectories.split(split)
        np.testing.assert_array_equal(t.logprob, [t.steps(i).astype(np.float64).sum() for i in range(len(t))])
        for i, c in enumerate(t.continuations):
            kinds[c.kind] += 1
            steps, full = t.steps(i), t.full(i)
            assert steps.dtype == np.float32 and len(steps) == len(c.token_ids) <= M
            assert (full is not None) == (c.kind == "sampled")
            for s, y in enumerate(c.token_ids):
                direct = direct_truth(target.model, [*prompts[c.prompt_id].token_ids, *c.token_ids[:s]],
                                      bos_ids=suite.bos_ids)
                assert abs(float(steps[s]) - float(direct[y])) <= 1e-4
                if full is not None:
                    np.testing.assert_allclose(full[s], direct, rtol=STORED_RTOL, atol=STORED_ATOL)
    assert kinds["realized"] == 3 and kinds["sampled"] == 3 * K and kinds["given"] >= 3
    storage = trajectories.record["storage"]["kl_exact_vs_stored"]
    assert 0 < storage["sealed"]["kl_mean"] <= storage["sealed"]["kl_max"] <= 1e-4
    settings = trajectories.record["settings"]
    assert settings["k"] == K and settings["max_tokens"] == M and settings["seed"] == 0
    assert settings["temperature"] == 1.0 and settings["sampler"].startswith("logitpred.gumbel-max")


def test_the_commitment_covers_sealed_continuations_and_their_truth(copy_home):
    from tasks.trajectory import load_trajectories, trajectory_dir, verify_trajectories
    from tasks.trajectory.store import commitment_of
    from tasks.truth import mmap_safetensors

    suite = load_suite("traj")
    verify_trajectories(suite)
    trajectories = load_trajectories(suite)
    record, folder = trajectories.record, trajectory_dir(suite)
    assert record["truth_commitment"] == suite.commitment and len(record["trajectory_commitment"]) == 64
    header, sealed = record["committed"], trajectories.split("sealed").arrays
    assert commitment_of(header, sealed) == record["trajectory_commitment"]
    changed = {k: np.array(v) for k, v in sealed.items()}
    changed["step_logprobs"][0] += 1e-3
    assert commitment_of(header, changed) != record["trajectory_commitment"]
    changed = {k: np.array(v) for k, v in sealed.items()}
    changed["full_f16"][0, 7] += 1
    assert commitment_of(header, changed) != record["trajectory_commitment"]
    assert commitment_of({**header, "continuations_sha256": "0" * 64}, sealed) != record["trajectory_commitment"]

    cpath = folder / record["files"]["sealed"]["continuations"]["file"]
    original = cpath.read_bytes()
    lines = original.decode().splitlines()
    first = json.loads(lines[0])
    first["token_ids"][0] += 1  # another realized continuation
    cpath.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(SuiteError, match="does not match its recorded hash"):
        verify_trajectories(load_suite("traj"))
    cpath.write_bytes(original)

    tpath = folder / record["files"]["sealed"]["truth"]["file"]
    original, before = tpath.read_bytes(), float(sealed["step_logprobs"][0])  # (sealed maps this file)
    header_len = int.from_bytes(original[:8], "little")
    begin = json.loads(original[8 : 8 + header_len])["step_logprobs"]["data_offsets"][0] + 8 + header_len
    data = bytearray(original)
    data[begin : begin + 4] = (np.frombuffer(original[begin : begin + 4], "<f4") - 0.5).tobytes()
    tpath.write_bytes(bytes(data))  # changed truth, with its file hash updated in the record: only the commitment
    edited = json.loads(json.dumps(record))  # can tell
    edited["files"]["sealed"]["truth"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (folder / "trajectories.json").write_text(json.dumps(edited))
    assert mmap_safetensors(tpath)["step_logprobs"][0] == np.float32(before - 0.5)
    with pytest.raises(SuiteError, match="do not match the published trajectory commitment"):
        verify_trajectories(load_suite("traj"))
    tpath.write_bytes(original)
    (folder / "trajectories.json").write_text(json.dumps(record))
    verify_trajectories(load_suite("traj"))

    truth = suite.truth_dir / "truth.json"  # next-token truth recomputed since: the set is stale
    (truth.parent / "truth.json").write_text(json.dumps({**json.loads(truth.read_text()), "commitment": "f" * 64}))
    with pytest.raises(SuiteError, match="built on next-token truth that has since changed"):
        verify_trajectories(load_suite("traj"))


def test_questions_show_no_sample_and_ask_no_answered_next_token(copy_home):
    """Prompts and realized and given continuations only, from the suite alone (the trajectory folder, where the
    samples lie, may be gone); no next-token question where a realized continuation is shown."""
    from tasks.trajectory import asked, load_trajectories, next_token_questions, questions, trajectory_dir

    suite = load_suite("traj")
    stored = {s: load_trajectories(suite).split(s).continuations for s in ("practice", "sealed")}
    samples = {c.id: c.token_ids for cs in stored.values() for c in cs if c.kind == "sampled"}
    assert len(samples) == 6 * K
    shutil.rmtree(trajectory_dir(suite))
    assert asked(suite) == {"next_token": False, "whole_continuation": ["realized", "given"],
                            "step_wise": ["sampled"]}
    for split in ("practice", "sealed"):
        lines = list(questions(load_suite("traj"), split))
        prompts = [q for q in lines if "continuation_id" not in q]
        conts = [q for q in lines if "continuation_id" in q]
        assert [q["prompt_id"] for q in prompts] == [p.id for p in suite.prompts(split)]
        assert all(set(q) == {"prompt_id", "text", "token_ids"} for q in prompts)
        assert all(set(q) == {"prompt_id", "continuation_id", "kind", "text", "token_ids"} for q in conts)
        assert {q["kind"] for q in conts} == {"realized", "given"}
        assert {q["continuation_id"] for q in conts} == {c.id for c in stored[split] if c.kind != "sampled"}
        assert not {q["continuation_id"] for q in conts} & set(samples)
        shown = {tuple(q["token_ids"]) for q in conts}
        for p in suite.prompts(split):
            assert tuple(p.continuation_ids) in shown  # the realized continuation is shown ...
        assert next_token_questions(suite, split) == []  # ... so its next token is never asked
        json.dumps(lines)


def test_prompt_and_continuation_must_fit_the_context(home, target):
    cfg = _config(home, continuation=30, samples=0, behaviours=None)
    with pytest.raises(SuiteError, match=r"suite 'traj': the target's context of 47 positions, minus 1 BOS and 30 "
                                         r"continuation tokens \(--continuation\), leaves prompts at most 16 tokens, "
                                         r"not more than min_context \(16\)"):
        window_size(cfg, 47, 1)
    assert window_size(cfg, 64, 1) == 33 + 30 and window_size(_config(home), None) == 96 + M
    rows = prompt_rows(_config(home, behaviours=None), target.tokenizer, context=40, n_bos=1)
    assert max(len(r["token_ids"]) + M for s in rows for r in rows[s]) <= 39
    longest = max((r for s in rows for r in rows[s]), key=lambda r: len(r["token_ids"]))
    n = len(longest["token_ids"])
    assert too_long(rows, n + M, 1) == [f"prompt {longest['id']} has {n} tokens and a continuation of {M}: with 1 "
                                        f"BOS that is {n + M + 1} positions, more than the target's context of "
                                        f"{n + M}"]
    assert too_long(rows, n + M + 1, 1) == []


def test_config_validation_and_rebuild_command(home):
    from tasks.suite import build_command

    for changes, message in (({"samples": 2}, "samples and behaviours need continuations"),
                             ({"behaviours": "b.jsonl"}, "samples and behaviours need continuations"),
                             ({"continuation": -1}, "continuation must be a whole number >= 0"),
                             ({"continuation": 4, "samples": 1.5}, "samples must be a whole number >= 0")):
        with pytest.raises(SuiteError, match=message):
            SuiteConfig("x", "wiki", **changes)
    command = build_command(load_suite("traj").manifest["config"])
    assert "--continuation 4 --samples 2 --behaviours " in command and command.endswith("--rebuild")


KILLED_BUILD = """
from tasks import load_suite, load_target
from tasks.trajectory import build_trajectories
build_trajectories(load_suite("traj"), load_target(), rebuild=True, batch_size=4)
"""


def test_a_build_killed_before_its_record_leaves_the_old_set(copy_home):
    """``kill -9`` in the middle of a rebuild: the record on disk is the old one, byte for byte, and every file it
    names is whole (hash-checked, committed); the standard safetensors reader reads the files as written."""
    import os
    import subprocess
    import sys

    from safetensors.numpy import load_file

    from tasks.trajectory import load_trajectories, trajectory_dir, verify_trajectories

    folder = trajectory_dir(load_suite("traj"))
    before = (folder / "trajectories.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD], env={**os.environ, "LOGITPRED_KILL_AT": "trajectories:before-record"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (folder / "trajectories.json").read_bytes() == before
    verify_trajectories(load_suite("traj"))
    trajectories = load_trajectories(load_suite("traj"))
    for split in ("practice", "sealed"):
        arrays = trajectories.split(split).arrays
        read = load_file(folder / trajectories.record["files"][split]["truth"]["file"])
        assert read.keys() == arrays.keys() and all(np.array_equal(read[k], arrays[k]) for k in read)
