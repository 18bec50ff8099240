"""The prediction format: every rejection of issue 3 part 5, and the exact rules for the remaining mass."""

import json

import numpy as np
import pytest

from predictors.format import Prediction, PredictionError, densify, read_jsonl, validate
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
    (Prediction("p", {"\ufffd": 0.1}), "decodes from several tokens"),
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
