"""The prediction format: every rejection of issue 3 part 5, the exact rules for the remaining mass, and reading
files line by line (duplicate keys, BOM, strict UTF-8, U+FFFD tokens, ambiguous names, the round trip of every token)."""

import json

import numpy as np
import pytest

from predictors.format import Prediction, PredictionError, densify
from predictors.jsonl import read_jsonl, validate, validate_file, write_jsonl
from tasks.vocab import Vocabulary

VOCAB = Vocabulary(raw=["a", "Ġb", "Ġc", "d", "<0xFF>", "<0xFE>"], text=["a", " b", " c", "d", "\ufffd", "\ufffd"])
BG = np.array([0.4, 0.3, 0.1, 0.1, 0.05, 0.05])


def test_top_with_uniform_rest_is_exact():
    q = densify(Prediction("p", {" b": 0.5, "a": 0.2}), VOCAB)
    np.testing.assert_allclose(q, [0.2, 0.5, 0.3 / 4, 0.3 / 4, 0.3 / 4, 0.3 / 4])
    assert q.sum() == pytest.approx(1.0)


def test_unigram_rest_follows_background_and_ids_and_raw_forms_work():
    q = densify(Prediction("p", [[1, 0.5], ["d", 0.1]], rest="unigram"), VOCAB, BG)
    others = BG[[0, 2, 4, 5]] / BG[[0, 2, 4, 5]].sum()
    np.testing.assert_allclose(q[[0, 2, 4, 5]], 0.4 * others)
    assert q[1] == 0.5 and q[3] == 0.1
    np.testing.assert_allclose(densify(Prediction("p", {"Ġb": 0.5}), VOCAB), densify(Prediction("p", {" b": 0.5}), VOCAB))


def test_full_mass_keeps_min_rest_floor_and_stays_positive():
    q = densify(Prediction("p", {" b": 1.0}), VOCAB)
    assert (q > 0).all() and q.sum() == pytest.approx(1.0)
    assert q[1] == pytest.approx(1 - 1e-6)


def test_full_vector_and_base64_roundtrip():
    v = np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0])
    q = densify(Prediction("p", probs=v), VOCAB)
    assert (q > 0).all() and q.sum() == pytest.approx(1.0) and q[3] == pytest.approx(0.4, abs=1e-6)
    back = Prediction.from_json(json.loads(json.dumps(Prediction("p", probs=v).to_json())))
    np.testing.assert_allclose(back.probs, v.astype(np.float32))


@pytest.mark.parametrize("pred, message", [
    (Prediction("p", {" b": float("nan")}), "not a finite number"),
    (Prediction("p", {" b": float("inf")}), "not a finite number"),
    (Prediction("p", {" b": -0.1}), "not a finite number >= 0"),
    (Prediction("p", {" b": 0.7, "a": 0.4}), "sum to 1.100000 > 1"),
    (Prediction("p", {" bb": 0.1}), "nearest vocabulary entries: ' b'"),
    (Prediction("p", {"\ufffd": 0.1}), r"is ambiguous: it names 2 tokens \(the decoded text of tokens 4, 5\)"),
    (Prediction("p", [[99, 0.1]]), "out of range"),
    (Prediction("p", [[1, 0.1], [" b", 0.2]]), "named more than once"),
    (Prediction("p", {}, rest="zipf"), "'rest' is 'zipf'"),
    (Prediction("p", probs=np.ones(5) / 5), "has 5 entries"),
    (Prediction("p", probs=np.array([0.5, 0.5, 0.5, 0, 0, 0])), "sums to 1.500000"),
    (Prediction("p", probs=np.array([1.5, -0.5, 0, 0, 0, 0])), "probs\\[1\\] = -0.5"),
])
def test_rejections_name_prompt_and_field(pred, message):
    with pytest.raises(PredictionError, match=message) as e:
        densify(pred, VOCAB, BG)
    assert "prompt p" in str(e.value)


def test_file_with_bad_lines_keeps_good_ones(tmp_path):
    lines = [
        json.dumps({"prompt_id": "p1", "top": {" b": 0.5}}),
        "{not json",
        json.dumps({"prompt_id": "p2", "top": {" zzz": 0.5}}),
        json.dumps({"prompt_id": "p1", "top": {"a": 0.5}}),
        json.dumps({"prompt_id": "nope", "top": {}}),
        json.dumps({"prompt_id": "p3", "top": {"a": 0.2}, "extra": 1}),
        json.dumps({"top": {"a": 0.2}}),
        json.dumps({"prompt_id": "p3", "rest": "unigram"}),
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    parsed, errors = read_jsonl(path)
    out = validate(parsed, ["p1", "p2", "p3", "p4"], VOCAB, BG, errors=errors)
    assert out.prompt_ids == ["p1", "p3"]
    np.testing.assert_allclose(out.probs[1], BG)
    text = "\n".join(out.errors)
    assert "line 2: malformed JSON" in text
    assert "line 3: prompt p2: top[' zzz']" in text
    assert "line 4: duplicate prompt_id 'p1'" in text
    assert "line 5: unknown prompt_id 'nope'" in text
    assert "line 6: prompt p3: unknown field(s) ['extra']" in text
    assert "line 7: missing or empty 'prompt_id'" in text
    assert len(out.errors) == 6
    assert out.missing == ["p2", "p4"]


def test_hostile_lines_are_rejected_one_by_one(tmp_path):
    path = tmp_path / "hostile.jsonl"
    good = json.dumps({"prompt_id": "p1", "top": {" b": 0.5}})
    path.write_bytes(b"\n".join([
        good.encode(),
        json.dumps({"prompt_id": "p2", "top": [[" b", 10**400]]}).encode(),
        json.dumps({"prompt_id": "p3", "probs": [10**400] * 6}).encode(),
        b'{"prompt_id": "p4", "top": {"\xff\xfe": 0.1}}',
        b"[" * 100000 + b"]" * 100000,
    ]) + b"\n")
    parsed, errors = read_jsonl(path)
    out = validate(parsed, ["p1", "p2", "p3", "p4"], VOCAB, BG, errors=errors)
    assert out.prompt_ids == ["p1"]
    text = "\n".join(out.errors)
    assert "line 2: prompt p2" in text and "above 1" in text
    assert "line 3: prompt p3" in text
    assert "line 4: not valid UTF-8" in text
    assert "line 5: malformed JSON" in text


def test_duplicate_keys_reject_their_line_naming_the_key(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_text('{"prompt_id": "p1", "top": {" b": 0.7, " b": 0.2}}\n'  # was scored as 0.2
                    '{"prompt_id": "p2", "prompt_id": "p3", "top": {"a": 0.5}}\n'  # was scored for p3
                    '{"prompt_id": "p3", "top": {"a": 0.5}}\n')
    out = validate_file(path, ["p1", "p2", "p3"], VOCAB, BG)
    assert out.errors == ["line 1: duplicate key ' b' in a JSON object: give each key once",
                          "line 2: duplicate key 'prompt_id' in a JSON object: give each key once"]
    assert out.prompt_ids == ["p3"] and out.probs[0, 0] == 0.5 and out.missing == ["p1", "p2"]


def test_byte_order_mark_is_accepted_on_the_first_line_only(tmp_path):
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps({"prompt_id": f"p{i}", "top": {"a": 0.5}}).encode() for i in (1, 2, 3)]
    path.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\r\n" + lines[1] + b"\r\n\xef\xbb\xbf" + lines[2] + b"\r\n")
    out = validate_file(path, ["p1", "p2", "p3"], VOCAB, BG)
    assert out.prompt_ids == ["p1", "p2"]
    assert out.errors == ["line 3: starts with a byte-order mark (U+FEFF), allowed only at the start of the file "
                          "(concatenated files?)"]
    assert read_jsonl(path)[0][0][1].prompt_id == "p1"


def test_unreadable_numbers_and_truncated_gzip_are_reported_not_raised(tmp_path):
    import gzip

    path = tmp_path / "num.jsonl"
    path.write_text('{"prompt_id": "p1", "top": [["a", ' + "1" * 5000 + "]]}\n" + json.dumps({"prompt_id": "p2"}) + "\n")
    out = validate_file(path, ["p1", "p2"], VOCAB, BG)
    assert out.prompt_ids == ["p2"] and out.errors[0].startswith("line 1: unreadable JSON (Exceeds the limit")
    data = gzip.compress("".join(json.dumps({"prompt_id": f"p{i}"}) + "\n" for i in range(5000)).encode())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    out = validate_file(gz, [f"p{i}" for i in range(5000)], VOCAB, BG)
    assert 0 < len(out.prompt_ids) < 5000 and out.prompt_ids == [f"p{i}" for i in range(len(out.prompt_ids))]
    assert len(out.errors) == 1 and "cannot read the file from here on" in out.errors[0]


def test_rows_come_back_in_suite_order_whatever_the_file_order(tmp_path):
    order = [4, 0, 3, 1, 5, 2, 7, 6]
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": f"p{i}", "top": [[i % 6, 0.5]]}) + "\n" for i in order))
    out = validate_file(path, [f"p{i}" for i in range(8)], VOCAB, BG)
    assert out.prompt_ids == [f"p{i}" for i in range(8)] and out.probs.shape == (8, 6)
    assert [int(np.argmax(row)) for row in out.probs] == [i % 6 for i in range(8)]
    again = validate([(None, Prediction(f"p{i}", [[i % 6, 0.5]])) for i in order], [f"p{i}" for i in range(8)], VOCAB)
    np.testing.assert_array_equal(again.probs, out.probs)


@pytest.fixture(scope="module")
def real_vocab(data_home) -> Vocabulary:
    """The real target's vocabulary (SmolLM2, 49,152 ids)."""
    from tasks import load_tokenizer

    tok, _ = load_tokenizer()
    return Vocabulary.from_tokenizer(tok, len(tok))


def test_lines_containing_u_fffd_are_text_and_bad_bytes_reject_only_their_line(tmp_path, real_vocab):
    assert (real_vocab.text[10003], real_vocab.text[28532]) == ("о\ufffd", "י\ufffd")
    path = tmp_path / "fffd.jsonl"
    good1 = json.dumps({"prompt_id": "p1", "top": {"о\ufffd": 0.25, " Paris": 0.5}}, ensure_ascii=False).encode()
    good3 = json.dumps({"prompt_id": "p3", "top": [["י\ufffd", 0.125]]}, ensure_ascii=False).encode()
    bad2 = b'{"prompt_id": "p2", "top": {" Par\xe9s": 0.5}}'  # Latin-1 bytes
    path.write_bytes(b"\n".join([good1, bad2, good3]) + b"\n")
    out = validate_file(path, ["p1", "p2", "p3"], real_vocab)
    assert out.errors == ["line 2: not valid UTF-8 (byte 0xe9 at byte 34 of the line); save the file as UTF-8"]
    assert out.prompt_ids == ["p1", "p3"]
    assert (out.probs[0, 10003], out.probs[0, 7042], out.probs[1, 28532]) == (0.25, 0.5, 0.125)


def test_ambiguous_name_in_a_file_is_refused_with_both_ids(tmp_path, real_vocab):
    path = tmp_path / "cent.jsonl"
    path.write_text(json.dumps({"prompt_id": "p1", "top": {"¢": 0.5}}, ensure_ascii=False) + "\n")
    out = validate_file(path, ["p1"], real_vocab)
    assert out.prompt_ids == [] and out.errors[0].startswith(
        "line 1: prompt p1: top['¢']: '¢' is ambiguous: it names 2 tokens (the decoded text of token 26387 and the "
        "raw form of token 112)")


def test_every_token_named_by_text_reads_back_as_itself(tmp_path, real_vocab):
    V, chunk = len(real_vocab), 1024
    preds, expected = [], []
    for k, start in enumerate(range(0, V, chunk)):
        ids = range(start, min(start + chunk, V))
        p = {i: (1 + i % 1000) * 1e-7 for i in ids}
        named = [(real_vocab.text[i] if real_vocab.intended(real_vocab.text[i]) == i else i, p[i]) for i in ids]
        preds.append(Prediction(f"c{k}", named))
        expected.append(p)
    assert sum(isinstance(c, int) for pr in preds for c, _ in pr.top) == 312  # text shared by several tokens
    pids = [pr.prompt_id for pr in preds]
    path = tmp_path / "all.jsonl"
    assert write_jsonl(path, preds, vocab=real_vocab) == len(preds) == 48
    written = [json.loads(line)["top"] for line in path.read_text(encoding="utf-8").splitlines()]
    names = [c for top in written for c in (top if isinstance(top, dict) else (c for c, _ in top))]
    assert sum(isinstance(c, int) for c in names) == 312 + 54  # 54 texts are another token's raw form
    out = validate_file(path, pids, real_vocab)
    assert out.errors == [] and out.prompt_ids == pids
    for row, p in zip(out.probs, expected, strict=True):
        ids = np.fromiter(p, dtype=np.int64)
        np.testing.assert_array_equal(row[ids], np.fromiter(p.values(), dtype=np.float64))
    by_id = tmp_path / "ids.jsonl"  # ids are written as text where the text names the token alone
    write_jsonl(by_id, [Prediction("p", [[7042, 0.5], [112, 0.125], [26387, 0.25]])], vocab=real_vocab)
    assert json.loads(by_id.read_text(encoding="utf-8"))["top"] == [[" Paris", 0.5], [112, 0.125], [26387, 0.25]]
    write_jsonl(by_id, [Prediction("p", [[7042, 0.5], ["Â¢", 0.25]])], vocab=real_vocab)
    assert json.loads(by_id.read_text(encoding="utf-8"))["top"] == [[" Paris", 0.5], [26387, 0.25]]  # its text '¢'
    write_jsonl(by_id, [Prediction("p", {" Paris": 0.5, " the": 0.25})], vocab=real_vocab)  # nothing to change
    assert json.loads(by_id.read_text(encoding="utf-8"))["top"] == {" Paris": 0.5, " the": 0.25}
    naive = tmp_path / "naive.jsonl"  # without the vocabulary, the 54 names are written as given and refused
    write_jsonl(naive, preds)
    errors = validate_file(naive, pids, real_vocab).errors
    assert errors and all("is ambiguous: it names 2 tokens" in e for e in errors)
    hit = {k for k, p in enumerate(expected) for i in p if real_vocab.intended(real_vocab.text[i]) == i
           and real_vocab.lookup(real_vocab.text[i]) is None}
    assert len(errors) == len(hit)
