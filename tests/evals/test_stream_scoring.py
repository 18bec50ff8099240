"""``logitpred score`` as one stream (``evals.stream_scoring``): each chunk of whole vectors scored as validation
fills it gives the per-prompt values, messages and run record of validating the whole file first
(``load_file`` + ``score``), bit for bit, whatever the chunk size; strict mode and empty files keep their behaviour.
The sealed split streams too: same scores and record, the holdout digest of the predictions whatever the file's line
order, and the ledger's count, repeat detection and refusal at the limit."""

import base64
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from evals.cli import app
from evals.scoring import ScoringError, load_file, score, score_validated
from evals.stream_scoring import score_file, score_stream, stream_of


def b64(q: np.ndarray) -> str:
    return base64.b64encode(np.asarray(q, dtype="<f4").tobytes()).decode()


def mixed_lines(suite, split: str) -> list[str]:
    """Predictions of every kind for ``split``: float32 vectors (one with zeros, kept whole as float64; one mostly
    zeros, kept sparse), a float64 ``probs`` list, a ``top`` line, and rejected lines among them, out of suite order."""
    ids, logp, _ = suite.truth_split(split)
    V, rng = logp.shape[1], np.random.default_rng(3)

    def vector(i: int, zeros: int = 0) -> np.ndarray:
        q = np.exp(logp[i].astype(np.float64) + rng.standard_normal(V)).astype(np.float32)
        q[rng.choice(V, zeros, replace=False)] = 0
        return (q / q.sum(dtype=np.float64)).astype(np.float32)

    lines = [json.dumps({"prompt_id": ids[i], "probs_b64": b64(vector(i))}) for i in range(len(ids))]
    lines[1] = json.dumps({"prompt_id": ids[1], "probs_b64": b64(vector(1, zeros=500))})
    lines[2] = json.dumps({"prompt_id": ids[2], "probs_b64": b64(vector(2, zeros=V - 30))})
    lines[3] = json.dumps({"prompt_id": ids[3], "probs": vector(3).astype(np.float64).tolist()})
    lines[4] = json.dumps({"prompt_id": ids[4], "top": {" the": 0.3, " of": 0.1}, "rest": "unigram"})
    lines = lines[::-1] + [
        json.dumps({"prompt_id": ids[0], "probs_b64": b64(vector(0))}),  # duplicate
        json.dumps({"prompt_id": "nope", "probs_b64": b64(vector(0))}),  # unknown
        json.dumps({"prompt_id": ids[0], "probs_b64": b64(vector(0) * 2)})[:-3] + "}",  # malformed
    ]
    return lines


def same_metrics(a, b, tol: float = 1e-9) -> bool:
    """Two summaries' metrics (nested dicts and lists of numbers) agree to ``tol``."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_metrics(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_metrics(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= tol
    return a == b


def assert_same_per_prompt(got, want) -> None:
    """Every per-prompt column equal: floats to 1e-12, the rest exactly."""
    for c in want.columns:
        a, b = got[c].to_numpy(), want[c].to_numpy()
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12, err_msg=c)
        else:
            assert list(a) == list(b), c


@pytest.fixture
def mixed(tiny_suite, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(mixed_lines(tiny_suite, "practice")) + "\n")
    return path


@pytest.mark.parametrize("rows", [1, 2, None])
def test_streamed_scores_equal_validating_the_whole_file_first(tiny_suite, mixed, rows):
    old = load_file(mixed, tiny_suite, "practice")
    want = score_validated(tiny_suite, "practice", old)
    got, rest = score_stream(tiny_suite, "practice", stream_of(mixed, tiny_suite, "practice", rows=rows))
    assert rest.prompt_ids == old.prompt_ids and rest.errors == old.errors and rest.missing == old.missing
    assert len(old.errors) == 3 and old.rows.is_full.sum() == 4 and len(rest.sparse.prompt_ids) == 2
    assert list(got.columns) == list(want.columns) and len(got) == len(old.prompt_ids)
    for c in want.columns:  # the rows are bit for bit the same; a row's sums (einsum) may be added in another order
        # in a chunk of another shape (1 row, not 2): ~1e-14
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), rtol=0, atol=1e-12, err_msg=c)


def test_score_file_gives_scores_run_record_and_messages(tiny_suite, mixed):
    seen = []
    got = score_file(tiny_suite, "practice", mixed, predictor={"name": "stream"}, write=False,
                     on_validated=seen.append)
    old = load_file(mixed, tiny_suite, "practice")
    want = score(tiny_suite, "practice", old, predictor={"name": "stream"}, source=mixed, write=False)
    assert seen[0].errors == old.errors and got.errors == want.errors
    assert_same_per_prompt(got.per_prompt, want.per_prompt)
    a, b = got.summary, want.summary
    for key in ("n_prompts", "n_scored", "n_rejected", "missing", "errors", "predictions_file", "predictor",
                "split", "seed"):
        assert a[key] == b[key], key
    assert same_metrics(a["metrics"], b["metrics"])


def test_strict_and_empty_files_are_refused_as_before(tiny_suite, mixed, tmp_path):
    def message(fn):
        with pytest.raises(ScoringError) as e:
            fn()
        return str(e.value)

    old = load_file(mixed, tiny_suite, "practice")
    strict = message(lambda: score_file(tiny_suite, "practice", mixed, predictor={"name": "s"}, strict=True,
                                        write=False))
    assert strict == message(lambda: score(tiny_suite, "practice", old, predictor={"name": "s"}, strict=True,
                                           write=False))
    assert strict.startswith("strict mode: 3 rejected line(s), 0 prompt(s)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "nope", "top": {}}\n{oops\n')
    empty = message(lambda: score_file(tiny_suite, "practice", bad, predictor={"name": "s"}, write=False))
    assert empty == message(lambda: score(tiny_suite, "practice", load_file(bad, tiny_suite, "practice"),
                                          predictor={"name": "s"}, write=False))
    assert empty.startswith("no valid prediction to score: line 1: unknown prompt_id 'nope'")
    gone = message(lambda: score_file(tiny_suite, "practice", tmp_path / "gone.jsonl", predictor={"name": "s"}))
    assert "does not exist" in gone


@pytest.fixture
def sealed(tiny_suite, tmp_path, monkeypatch):
    """A sealed file of every kind of line (one rejected: a duplicate, one malformed), a fresh ledger and results."""
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    path = tmp_path / "sealed.jsonl"
    path.write_text("\n".join(x for x in mixed_lines(tiny_suite, "sealed") if '"nope"' not in x) + "\n")
    return path


def test_the_sealed_split_streams_with_the_scores_record_and_digest_of_the_whole_file(tiny_suite, sealed,
                                                                                       monkeypatch):
    """Chunks of 2 rows through one buffer, scored and hashed as they fill; the file is never validated whole; the
    scores (1e-12), the record and the digest are those of ``load_file`` + ``score``."""
    from evals import scoring
    from predictors import digest, stream

    old = load_file(sealed, tiny_suite, "sealed")
    want = score(tiny_suite, "sealed", old, predictor={"name": "whole"}, source=sealed, write=False)
    monkeypatch.setattr(stream, "chunk_size", lambda vocab_size: 2)
    monkeypatch.setattr(scoring, "validate_file", lambda *a: pytest.fail("the sealed file was validated whole"))
    hashed, add = [], digest.SubmissionDigest.add
    monkeypatch.setattr(digest.SubmissionDigest, "add", lambda self, at, probs: (hashed.append(probs), add(self, at,
                                                                                                            probs)))
    got = score_file(tiny_suite, "sealed", sealed, predictor={"name": "streamed"}, write=False)
    assert [len(p) for p in hashed] == [2, 2] and all(np.shares_memory(p, hashed[0].base) for p in hashed)
    assert got.summary["holdout"]["predictions_sha256"] == old.digest() == want.summary["holdout"]["predictions_sha256"]
    assert got.summary["holdout"]["submission"] == 1 and want.summary["holdout"]["submission"] == 1  # two labels
    assert_same_per_prompt(got.per_prompt, want.per_prompt)
    for key in ("n_prompts", "n_scored", "n_rejected", "missing", "errors", "predictions_file", "split", "seed",
                "suite", "target"):
        assert got.summary[key] == want.summary[key], key
    assert got.summary["n_rejected"] == 2 and same_metrics(got.summary["metrics"], want.summary["metrics"], 1e-12)


def test_the_sealed_ledger_counts_recognises_repeats_and_refuses_at_the_limit(tiny_suite, sealed, tmp_path,
                                                                             monkeypatch):
    """A file scored, then its lines in another order (and the same predictions in Python) are one submission; new
    predictions count; at the limit a predictor is refused before its file is read, with nothing recorded."""
    from evals import holdout
    from predictors import stream

    monkeypatch.setenv("LOGITPRED_SEALED_LIMIT", "2")
    results = tmp_path / "results"

    def submit(path, **kw):
        return score_file(tiny_suite, "sealed", path, predictor={"name": "led"}, results_root=results, **kw)

    first = submit(sealed).summary["holdout"]
    lines = sealed.read_text().splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines[:-2][::-1] + lines[-2:]) + "\n")  # reversed; the rejected lines stay last
    again = submit(shuffled).summary["holdout"]
    python = score(tiny_suite, "sealed", load_file(sealed, tiny_suite, "sealed"), predictor={"name": "led"},
                   write=False).summary["holdout"]
    assert first["submission"] == again["submission"] == python["submission"] == 1
    assert first["predictions_sha256"] == again["predictions_sha256"] == python["predictions_sha256"]
    with pytest.raises(ScoringError, match="strict mode: 2 rejected"):
        submit(sealed, strict=True)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(lines[1:]) + "\n")  # one prediction less: new content
    assert submit(fewer).summary["holdout"]["submission"] == 2 and holdout.count(tiny_suite, "led") == 2
    ledger, runs = (tmp_path / "ledger.jsonl").read_text(), len(list(results.iterdir()))
    read = []
    monkeypatch.setattr(stream, "iter_jsonl", lambda path: read.append(path) or iter(()))
    with pytest.raises(holdout.HoldoutError, match="limit 2"):
        submit(shuffled)
    assert read == [] and (tmp_path / "ledger.jsonl").read_text() == ledger and len(list(results.iterdir())) == runs


def test_run_and_score_recognise_the_same_predictions_as_one_submission(tiny_suite, tmp_path, monkeypatch):
    """``logitpred run`` (in-process predictions) and ``logitpred predict`` + ``score`` (a file, streamed) of the
    same predictor on sealed give one digest: the second is a repeat, not counted."""
    monkeypatch.setenv("LOGITPRED_LEDGER", str(tmp_path / "ledger.jsonl"))
    runner = CliRunner()
    result = runner.invoke(app, ["run", "-s", "tiny", "-p", "unigram", "--split", "sealed"])
    assert result.exit_code == 0, result.output
    file = tmp_path / "unigram.jsonl"
    result = runner.invoke(app, ["predict", "-p", "unigram", "-s", "tiny", "--split", "sealed", "-o", str(file)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["score", str(file), "-s", "tiny", "--split", "sealed"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [r["predictor"] for r in rows] == ["unigram"] and rows[0]["digest"].startswith("v2:")
    runs = sorted(tiny_suite.path.parent.parent.glob("results/*-tiny-sealed-unigram/summary.json"))
    last = [json.loads(r.read_text())["holdout"] for r in runs[-2:]]
    assert last[0]["predictions_sha256"] == last[1]["predictions_sha256"] == rows[0]["digest"]
    assert [h["submission"] for h in last] == [1, 1]


def test_the_cli_scores_a_full_vector_file_as_the_library_does(tiny_suite, mixed, tmp_path):
    results = tiny_suite.path.parent.parent / "results"
    before = set(results.glob("*-tiny-practice-mixed"))
    result = CliRunner().invoke(app, ["score", str(mixed), "-s", "tiny", "--split", "practice", "--name", "cli"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.replace("│", " ").split())
    assert "line 7: duplicate prompt_id" in out and "line 9: malformed JSON" in out
    assert "6 scored, 3 rejected, 0 missing" in out
    (run_dir,) = set(results.glob("*-tiny-practice-mixed")) - before
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["predictor"]["label"] == "cli"
    old = load_file(mixed, tiny_suite, "practice")
    want = score(tiny_suite, "practice", old, predictor={"name": "cli"}, source=mixed, write=False).summary
    assert same_metrics(summary["metrics"], json.loads(json.dumps(want["metrics"])))


def test_chunk_workers_and_their_scratch_buffers_are_kept_between_calls(monkeypatch):
    """A stream is scored one chunk per call: the workers (and so their thread-local scratch buffers) are the same
    from call to call, not new threads with new buffers; a call from inside a worker runs there (no deadlock)."""
    import threading

    from tasks import truth_stats

    monkeypatch.setattr(truth_stats, "THREADS", 2)

    def where(a, b):
        return threading.get_ident(), id(truth_stats.scratch(2, 64, 1)[0])

    seen = {}
    for _ in range(3):
        for ident, buf in truth_stats.run_chunks(where, 64, 1):
            assert seen.setdefault(ident, buf) == buf  # a thread keeps its buffer
    assert 1 <= len(seen) <= 2 and threading.get_ident() not in seen
    nested = truth_stats.run_chunks(lambda a, b: truth_stats.run_chunks(where, 4, 1), 8, 1)
    assert all(len({ident for ident, _ in inner}) == 1 for inner in nested)  # each inner call stayed in its worker
