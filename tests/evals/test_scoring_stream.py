"""Scoring files as a stream: a hostile real file through load_file and score, peak memory bounded by the accepted
rows as given (named tokens, not vocabulary-sized vectors; whole vectors for full-vector lines) (tracemalloc, not
timing), a bounded number of near-match searches for a file full of unknown names, and ``score`` (sparse rows against
the cached truth constants) equal to the dense path on the same predictions."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest

from evals.scoring import load_file, score
from predictors.format import Prediction, densify
from predictors.jsonl import HINT_LIMIT, validate, validate_file

MB = 1 << 20



def validate_traced(path, ids, vocab):
    """``validate_file`` with the peak of Python-traced memory while it ran (bytes)."""
    tracemalloc.start()
    try:
        out = validate_file(path, ids, vocab)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

def test_load_file_streams_a_hostile_file_and_scores_in_suite_order(tiny_suite, tmp_path):
    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    ids = [p.id for p in tiny_suite.prompts("practice")]
    tops = [{"о\ufffd": 0.2, " the": 0.1}, {"י\ufffd": 0.3}, {" Paris": 0.4, "ĠLondon": 0.1}, {" of": 0.5},
            {" a": 0.05, " café": 0.05}, {}]
    preds = {pid: Prediction(pid, top, "unigram") for pid, top in zip(ids, tops, strict=True)}
    lines = [json.dumps(preds[pid].to_json(), ensure_ascii=False).encode() for pid in reversed(ids)]
    body = [
        f'{{"prompt_id": "{ids[0]}", "top": {{" the": 0.7, " the": 0.2}}}}'.encode(),  # refused, not scored as 0.2
        *lines[:3],
        bad := b'{"prompt_id": "' + ids[1].encode() + b'", "top": {"\xff": 0.1}}',  # not UTF-8: only this line lost
        *lines[3:],
    ]
    path = tmp_path / "preds.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(body) + b"\r\n")  # a Windows editor's file
    out = load_file(path, tiny_suite, "practice")
    assert out.errors == ["line 1: duplicate key ' the' in a JSON object: give each key once",
                          f"line 5: not valid UTF-8 (byte 0xff at byte {bad.index(255) + 1} of the line); save the "
                          "file as UTF-8"]
    assert out.prompt_ids == ids and out.missing == []
    expected = np.stack([densify(preds[pid], vocab, bg) for pid in ids])
    assert not out.rows.is_full.any()  # kept as named tokens + rest
    np.testing.assert_array_equal(out.probs, expected)
    assert out.probs[0, 10003] == 0.2 and out.probs[1, 28532] == 0.3
    scored = score(tiny_suite, "practice", out, predictor={"name": "stream"}, write=False)
    direct = score(tiny_suite, "practice", validate([(None, preds[p]) for p in ids], ids, vocab, bg),
                   predictor={"name": "stream"}, write=False)
    assert list(scored.per_prompt["prompt_id"]) == ids
    np.testing.assert_array_equal(scored.per_prompt["kl_nats"], direct.per_prompt["kl_nats"])


@pytest.fixture(scope="module")
def unique_names(tiny_suite) -> list[str]:
    vocab = tiny_suite.vocabulary
    return [t for i, t in enumerate(vocab.text) if vocab.lookup(t) == i]


def test_peak_memory_of_a_20_mb_file_is_the_named_tokens(tiny_suite, unique_names, tmp_path):
    """100 accepted rows of 1,300 named tokens (2.1 MB as given; 39.3 MB as float64 vectors); the file (21 MiB, 900
    lines of 1,300 names each) is never held, and no row is densified."""
    vocab, rng, k = tiny_suite.vocabulary, random.Random(0), 1300
    ids = [f"p{i:03d}" for i in range(200)]
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in range(900):  # 100 accepted, 100 rejected after every name was looked up (sum > 1), 700 duplicates
            top = dict.fromkeys(rng.sample(unique_names, k), 0.0007 if n < 100 else 0.001)  # sums 0.91 or 1.3
            f.write(json.dumps({"prompt_id": ids[n % 200], "top": top}, ensure_ascii=False) + "\n")
    size = path.stat().st_size
    assert size > 20 * MB
    out, peak = validate_traced(path, ids, vocab)
    kept = out.rows.ids.nbytes + out.rows.vals.nbytes
    assert out.prompt_ids == ids[:100] and kept == 100 * k * 16 and not out.rows.is_full.any()
    assert len(out.errors) == 800 and out.errors[0].startswith("line 101: prompt p100: 'top' probabilities sum to 1.3")
    assert peak <= kept + 8 * MB, f"peak {peak / MB:.1f} MiB for {kept / MB:.1f} MiB of rows ({size / MB:.0f} MiB file)"
    assert out.probs.nbytes == 100 * len(vocab) * 8  # densified only on request


def test_peak_memory_of_full_vector_lines_is_the_accepted_rows(tiny_suite, tmp_path):
    """60 accepted full vectors (23.6 MB as float64) in blocks that never copy themselves: peak within 1.25x + 8 MB."""
    import base64

    vocab, V = tiny_suite.vocabulary, len(tiny_suite.vocabulary)
    rng = np.random.default_rng(0)
    ids = [f"p{i:03d}" for i in range(100)]
    path = tmp_path / "full.jsonl"
    rows = []
    with open(path, "w") as f:
        for n in range(60):
            q = rng.random(V).astype("<f4")
            q /= q.sum(dtype=np.float64)
            rows.append(q)
            f.write(json.dumps({"prompt_id": ids[59 - n], "probs_b64": base64.b64encode(q.tobytes()).decode()}) + "\n")
    out, peak = validate_traced(path, ids, vocab)
    whole = 60 * V * 8
    assert out.prompt_ids == ids[:60] and out.rows.is_full.all()
    assert peak <= 1.25 * whole + 8 * MB, f"peak {peak / MB:.1f} MiB for {whole / MB:.1f} MiB of rows"
    expected = np.stack([densify(Prediction(ids[59 - n], probs=rows[n]), vocab) for n in range(60)][::-1])
    np.testing.assert_array_equal(out.probs, expected)


def test_score_equals_the_dense_path_and_keeps_the_ledger_digest(tiny_suite):
    """``score`` (sparse rows in O(named tokens), truth constants cached beside the truth) gives the dense path's
    values on the same predictions, every column to 1e-9; the holdout digest (``predictors.digest``) does not depend on
    the order the predictions come in."""
    from evals.scoring import score_matrix

    vocab, bg = tiny_suite.vocabulary, tiny_suite.background
    ids, logp, nxt = tiny_suite.truth_split("practice")
    rng = np.random.default_rng(5)
    preds = []
    for i, pid in enumerate(ids):
        top = [[int(t), 0.1] for t in np.argsort(-logp[i])[: i + 1]]  # the target's own top tokens
        preds.append(Prediction(pid, top + [[int(rng.integers(0, len(vocab))), 0.05]], "unigram" if i % 2 else "uniform"))
    preds[-1] = Prediction(ids[-1], probs=np.exp(logp[0].astype(np.float64)) / np.exp(logp[0].astype(np.float64)).sum())
    checked = validate([(None, p) for p in preds], ids, vocab, bg)
    assert list(checked.rows.is_full) == [False] * (len(ids) - 1) + [True]
    got = score(tiny_suite, "practice", checked, predictor={"name": "sparse-vs-dense"}, write=False).per_prompt
    dense = score_matrix(logp, checked.probs, nxt)
    for col in dense.columns:
        np.testing.assert_allclose(got[col], dense[col], rtol=0, atol=1e-9, err_msg=col)
    assert (tiny_suite.truth_dir / "stats-practice.json").is_file()
    assert checked.digest() == validate([(None, p) for p in preds[::-1]], ids, vocab, bg).digest()


def test_a_file_of_unknown_names_does_at_most_hint_limit_near_match_searches(tiny_suite, tmp_path):
    vocab = tiny_suite.vocabulary
    ids = [f"p{i:04d}" for i in range(1000)]
    lines = [{"prompt_id": ids[n], "top": {f" zq{n}xy": 0.5}} for n in range(900)]  # 900 distinct unknown names
    lines += [{"prompt_id": ids[900 + n], "top": {" zq0xy": 0.5}} for n in range(50)]  # line 1's name again
    lines += [{"prompt_id": ids[950 + n], "top": {"\ufffd": 0.5}} for n in range(50)]  # ambiguous, 265 ids
    path = tmp_path / "unknown.jsonl"
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in lines), encoding="utf-8")
    before = vocab.near_match_searches
    out = validate_file(path, ids, vocab)
    assert vocab.near_match_searches - before == HINT_LIMIT == 20
    assert out.prompt_ids == [] and len(out.errors) == 1000
    assert all("nearest vocabulary entries" in e for e in out.errors[:20])
    assert all(e.endswith("(nearest entries are suggested for the first 20 unknown names of a file only)")
               for e in out.errors[20:900])
    assert all(e.endswith("(as at line 1)") for e in out.errors[900:950])
    full, short = out.errors[950], out.errors[951:]
    assert "it names 265 tokens (the decoded text of 265 tokens)" in full and len(full.split("names it alone): ")[1]
                                                                                  .split("; ")) == 265
    assert all(e.endswith("'\ufffd' is ambiguous: it names 265 tokens (ids and how to name each at line 951)")
               for e in short)
    assert max(map(len, out.errors[:950])) < 300 and max(map(len, short)) < 300  # one full list per name and file
