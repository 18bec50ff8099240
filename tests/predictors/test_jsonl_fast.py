"""Full-vector lines at speed (issue 15 part 3): the ``probs_b64`` shortcut of ``predictors.jsonl`` parses every line
to what the JSON parser over the whole line gives, or steps aside; validation keeps a float32 vector as given and
reads it back bit for bit as ``densify``'s float64 row; the same lines are accepted and rejected, with the same
messages, and score the same."""

import base64
import hashlib
import json
import struct

import numpy as np
import pytest

from evals.sparse import score_rows
from predictors.format import Prediction, PredictionError, check, densify
from predictors.jsonl import (
    _MARK,
    FAST_B64_MIN,
    _count_mark,
    _parse_full_vector,
    _parse_line,
    _parse_whole_line,
    decode_line,
    raw_lines,
    validate,
    validate_file,
)
from predictors.rows import PredictionRows
from tasks.truth_stats import compute_stats
from tasks.vocab import Vocabulary

V = 1024  # 5,464 base64 characters a vector: over FAST_B64_MIN, so lines take the shortcut
VOCAB = Vocabulary([f"t{i}" for i in range(V)], [f"t{i}" for i in range(V)])
BG = np.full(V, 1 / V)


def vector(seed: int = 0, zeros: int = 0) -> np.ndarray:
    """A float32 distribution over V tokens (``zeros`` of them exactly 0)."""
    rng = np.random.default_rng(seed)
    q = np.exp(rng.standard_normal(V) * 2.5).astype(np.float32)
    q[rng.choice(V, zeros, replace=False)] = 0
    return (q / q.sum(dtype=np.float64)).astype("<f4")


def b64(q: np.ndarray) -> str:
    return base64.b64encode(np.asarray(q, dtype="<f4").tobytes()).decode()


GOOD = b64(vector())
assert len(GOOD) >= FAST_B64_MIN


def same(a, b) -> bool:
    """Two parse results are the same: equal messages, or predictions with the same fields and vector (and dtype)."""
    if isinstance(a, str) or a is None or isinstance(b, str) or b is None:
        return a == b
    return (a.prompt_id, a.top, a.rest) == (b.prompt_id, b.top, b.rest) and (
        (a.probs is None and b.probs is None)
        or (a.probs.dtype == b.probs.dtype and np.array_equal(a.probs, b.probs, equal_nan=True)))


def fill(template: str, *values: str) -> str:
    """``template`` with each ``@`` replaced by the next of ``values``."""
    parts = template.split("@")
    assert len(parts) == len(values) + 1
    return "".join(p + v for p, v in zip(parts, values, strict=False)) + parts[-1]


PLAIN = '{"prompt_id": "p1", "probs_b64": "@"}'
ESCAPED_MARK = "".join(f"\\u{ord(c):04x}" for c in _MARK)
# each line: (text, whether the shortcut takes it)
LINES = {
    "plain": (fill(PLAIN, GOOD), True),
    "key first, no spaces": (fill('{"probs_b64":"@","prompt_id":"p1"}', GOOD), True),
    "white space around the colon": (fill('{"prompt_id": "p1", "probs_b64" \t:\r  "@" }', GOOD), True),
    "the key's text as a value before it": (
        fill('{"prompt_id": "p1", "meta": {"a": [1, {"b": "probs_b64"}], "c": null}, "probs_b64": "@"}', GOOD), True),
    "rest given (ignored for a vector)": (fill('{"prompt_id": "p1", "rest": "unigram", "probs_b64": "@"}', GOOD), True),
    "probs too (probs_b64 wins)": (fill('{"prompt_id": "p1", "probs": [1, 2], "probs_b64": "@"}', GOOD), True),
    "the key's text escaped in a string before it": (  # \"probs_b64\" is no match: the shortcut finds the real key
        fill('{"prompt_id": "x\\"probs_b64\\": \\"@", "probs_b64": "@"}', GOOD, GOOD), True),
    "NaN entry": (fill(PLAIN, b64(np.r_[np.nan, vector()[1:]])), True),
    "negative entry": (fill(PLAIN, b64(np.r_[-0.5, vector()[1:]])), True),
    "inf entry": (fill(PLAIN, b64(np.r_[np.inf, vector()[1:]])), True),
    "sums to 1.5": (fill(PLAIN, b64(vector() * 1.5)), True),
    "wrong length": (fill(PLAIN, b64(vector()[:-3])), True),
    # what the shortcut leaves to the parser
    "not base64 (!)": (fill(PLAIN, "!" + GOOD[1:]), False),
    "bad padding": (fill(PLAIN, GOOD + "="), False),
    "not whole float32 values": (fill(PLAIN, base64.b64encode(vector().tobytes() + b"\x00\x01").decode()), False),
    "escaped slash (still base64)": (fill(PLAIN, GOOD.replace("/", "\\/")), False),
    "control character": (fill(PLAIN, GOOD[:100] + "\t" + GOOD[100:]), False),
    "non-ASCII character": (fill(PLAIN, GOOD[:100] + "é" + GOOD[100:]), False),
    "not a string": (fill('{"prompt_id": "p1", "probs_b64": [@]}', ", ".join(["0.001"] * 1500)), False),
    "top too": (fill('{"prompt_id": "p1", "top": {"t1": 0.5}, "probs_b64": "@"}', GOOD), False),
    "unknown field": (fill('{"prompt_id": "p1", "extra": 1, "probs_b64": "@"}', GOOD), False),
    "no prompt id": (fill('{"probs_b64": "@"}', GOOD), False),
    "prompt id not a string": (fill('{"prompt_id": 7, "probs_b64": "@"}', GOOD), False),
    "key given twice": (fill('{"prompt_id": "p1", "probs_b64": "@", "probs_b64": "@"}', GOOD, GOOD), False),
    "prompt id given twice": (fill('{"prompt_id": "p1", "prompt_id": "p2", "probs_b64": "@"}', GOOD), False),
    "malformed after the vector": (fill('{"prompt_id": "p1", "probs_b64": "@",, }', GOOD), False),
    "trailing text": (fill(PLAIN + " x", GOOD), False),
    "unterminated string": (fill('{"prompt_id": "p1", "probs_b64": "@', GOOD), False),
    "a list, not an object": (fill("[" + PLAIN + "]", GOOD), False),
    "nested key first": (fill('{"meta": {"probs_b64": "@"}, "prompt_id": "p1", "probs_b64": "@"}', b64(vector(1)),
                              GOOD), False),
    "the mark given as text": (fill('{"meta": "@", "prompt_id": "p1", "probs_b64": "@"}', _MARK, GOOD), False),
    "the mark given in escapes, as the real value": (
        fill('{"meta": {"probs_b64": "@"}, "prompt_id": "p1", "probs_b64": "@"}', GOOD, ESCAPED_MARK), False),
}


@pytest.mark.parametrize("name", list(LINES))
def test_the_shortcut_parses_each_line_as_the_whole_line_parser_does(name):
    text, fast = LINES[name]
    data = text.encode() + b"\n"
    whole = _parse_whole_line(2, data)
    assert same(_parse_line(2, data), whole)
    assert (_parse_full_vector(2, data) is not None) == fast
    if fast:
        assert same(_parse_full_vector(2, data), whole)


def test_byte_order_mark_on_a_vector_line():
    line = LINES["plain"][0].encode() + b"\n"
    assert same(_parse_line(1, b"\xef\xbb\xbf" + line), _parse_whole_line(1, line))
    assert _parse_full_vector(1, b"\xef\xbb\xbf" + line) is not None
    assert _parse_full_vector(2, b"\xef\xbb\xbf" + line) is None
    assert same(_parse_line(2, b"\xef\xbb\xbf" + line), _parse_whole_line(2, b"\xef\xbb\xbf" + line))
    assert "byte-order mark" in _parse_line(2, b"\xef\xbb\xbf" + line)


def test_a_nested_vector_is_not_taken_for_the_top_level_one():
    """The mark written in escapes as the real ``probs_b64``: with the nested vector replaced by the mark, the
    top-level value reads as the mark too; only counting the mark (twice) stops the shortcut from taking the nested
    vector. The whole-line parser rejects the line (its ``probs_b64`` is not base64), and so does validation."""
    data = LINES["the mark given in escapes, as the real value"][0].encode()
    start = data.index(GOOD.encode())
    obj = decode_line(1, data[:start] + _MARK.encode() + data[start + len(GOOD):])
    assert obj["probs_b64"] == obj["meta"]["probs_b64"] == _MARK and _count_mark(obj) == 2
    assert _parse_full_vector(1, data) is None
    assert "'probs_b64' is not base64" in _parse_line(1, data) == _parse_whole_line(1, data)


def reference_digest(ids, probs, named, background):
    """The ledger digest by its definition (``predictors.digest``): per-row sha256s of (id, float64 row), or for the
    rows in ``named`` (id -> ``Row``) of (id, V, rest, rule, ids, probabilities, background), then one sha256."""
    bg = hashlib.sha256(background.astype("<f8").tobytes()).digest()
    parts = []
    for i, q in zip(ids, probs, strict=True):
        head = json.dumps(i).encode()
        if i in named:
            r = named[i]
            body = (struct.pack("<qd?q", len(q), r.rest, r.unigram, r.ids.size) + r.ids.astype("<i8").tobytes()
                    + r.ps.astype("<f8").tobytes() + (bg if r.unigram else b""))
            parts.append(hashlib.sha256(head + b"\nnamed\n" + body).digest())
        else:
            parts.append(hashlib.sha256(head + b"\nwhole\n" + q.astype("<f8").tobytes()).digest())
    rows = b"".join(parts)
    return "v2:" + hashlib.sha256(b"logitpred/predictions/2\n" + json.dumps(ids).encode() + b"\n" + rows).hexdigest()


def reference(path, ids, vocab, background=None):
    """What validation gives, by definition: every line through the JSON parser over the whole line, ``densify``
    for each accepted prediction, first prediction per prompt; rows in suite order."""
    errors, kept = [], {}
    for n, data in raw_lines(path):
        item = data if isinstance(data, str) else _parse_whole_line(n, data)
        if item is None:
            continue
        if isinstance(item, str):
            errors.append(f"line {n}: {item}")
        elif item.prompt_id not in ids:
            errors.append(f"line {n}: unknown prompt_id {item.prompt_id!r}: not in this suite split")
        elif item.prompt_id in kept:
            errors.append(f"line {n}: duplicate prompt_id {item.prompt_id!r}: only the first prediction is kept")
        else:
            try:
                kept[item.prompt_id] = densify(item, vocab, background)
            except PredictionError as e:
                errors.append(f"line {n}: {e}")
                kept[item.prompt_id] = None  # seen: a later line for it is a duplicate
    accepted = [p for p in ids if kept.get(p) is not None]
    return accepted, errors, np.array([kept[p] for p in accepted]).reshape(len(accepted), len(vocab))


def test_a_file_of_every_case_is_validated_as_by_the_whole_line_parser(tmp_path):
    """Accepted and rejected lines, their messages, the rows bit for bit (whole float32 rows kept as given, rows with
    zeros kept as float64 or sparse, float64 ``probs`` lists) and the holdout digest, against the definition."""
    ids = [f"p{i}" for i in range(40)]
    lines = []
    for i, (text, _) in enumerate(LINES.values()):  # each case for its own prompt
        lines.append(text.replace('"p1"', f'"p{i}"'))
    k = len(lines)
    lines += [
        json.dumps({"prompt_id": f"p{k}", "probs_b64": b64(vector(3, zeros=100))}),  # kept whole, as float64
        json.dumps({"prompt_id": f"p{k + 1}", "probs_b64": b64(vector(4, zeros=V - 20))}),  # kept sparse
        json.dumps({"prompt_id": f"p{k + 2}", "probs": vector(5).astype(np.float64).tolist()}),  # a float64 list
        json.dumps({"prompt_id": f"p{k + 3}", "top": {"t3": 0.5}}),  # a top line among them
        json.dumps({"prompt_id": f"p{k + 4}", "probs_b64": b64(vector(6))}),
        json.dumps({"prompt_id": f"p{k + 4}", "probs_b64": b64(vector(7))}),  # duplicate: the first is kept
        json.dumps({"prompt_id": "nope", "probs_b64": b64(vector(8))}),  # not in the split
        json.dumps({"prompt_id": f"p{k + 5}", "probs_b64": b64(np.r_[vector(9)[:-1], -0.0])}),  # -0.0: a zero
        "",
    ]
    assert k + 6 <= len(ids)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = validate_file(path, ids, VOCAB, BG)
    accepted, errors, probs = reference(path, ids, VOCAB, BG)
    assert out.prompt_ids == accepted and out.errors == errors
    assert len(accepted) == 15 and len(errors) == len(lines) - 1 - 15
    assert out.rows.is_full.sum() == 13  # the sparse ones: V - 20 zeros, and the top line
    np.testing.assert_array_equal(out.probs, probs)
    named = {p: out.rows.row(i) for i, p in enumerate(accepted) if not out.rows.is_full[i]}
    assert len(named) == 2 and out.digest() == reference_digest(accepted, probs, named, BG)
    messages = "\n".join(out.errors)
    for expected in ("probs[0] = nan is not a finite non-negative number", "probs[0] = -0.5 is not",
                     "probs[0] = inf is not", "full vector sums to 1.500000, not 1",
                     "full vector has 1021 entries; the target's vocabulary has 1024",
                     "'probs_b64' is not base64 of float32 values", "duplicate key 'probs_b64'",
                     "malformed JSON (Expecting property name enclosed in double quotes at column",
                     "give either 'top' or a full vector, not both", "unknown field(s) ['extra']",
                     "missing or empty 'prompt_id'", "duplicate prompt_id", "unknown prompt_id 'nope'"):
        assert expected in messages, expected


def test_whole_rows_kept_as_float32_read_back_and_score_as_densify_rows(tmp_path):
    """Rows in several blocks (float32 as given and float64), in an order other than the file's: ``rows.full``,
    ``.probs``, ``row`` and the scores equal those of the densified rows exactly; half the bytes are kept."""
    n = 30
    ids = [f"p{i}" for i in range(n)]
    order = list(np.random.default_rng(1).permutation(n))
    qs = {i: vector(10 + i, zeros=50 if i % 7 == 0 else 0) for i in range(n)}
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": f"p{i}", "probs_b64": b64(qs[i])}) + "\n" for i in order))
    out = validate_file(path, ids, VOCAB, BG)
    want = np.stack([densify(Prediction(f"p{i}", probs=qs[i]), VOCAB, BG) for i in range(n)])
    rows = out.rows
    assert rows.is_full.all() and len(rows.full.blocks) > 2
    as_given = [rows.full.blocks[b].dtype == np.float32 for b, _ in rows.full.where]
    assert sum(as_given) == 25  # the 5 vectors with zeros are kept as float64
    for i in range(n):
        np.testing.assert_array_equal(rows.row(i).full, want[i])
    np.testing.assert_array_equal(rows.full[rows.full_index[::-1]], want[::-1])
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n, V)).astype(np.float32)
    logp = z - np.log(np.exp(z.astype(np.float64)).sum(axis=1, keepdims=True)).astype(np.float32)
    nxt = rng.integers(0, V, n)
    stats = compute_stats(logp, BG)
    got, expected = score_rows(rows, logp, nxt, stats), score_rows(PredictionRows.from_dense(want), logp, nxt, stats)
    for c in expected:
        np.testing.assert_array_equal(got[c], expected[c], err_msg=c)
    np.testing.assert_array_equal(out.probs, want)


def test_validate_keeps_a_float32_vector_as_given_and_a_float64_one_as_its_distribution():
    q32, q64 = vector(20), vector(21).astype(np.float64)
    out = validate([(1, Prediction("a", probs=q32)), (2, Prediction("b", probs=q64))], ["a", "b"], VOCAB)
    blocks = out.rows.full.blocks
    assert sorted(str(b.dtype) for b in blocks) == ["float32", "float64"]
    np.testing.assert_array_equal(out.probs, np.stack([densify(Prediction("a", probs=q32), VOCAB),
                                                      densify(Prediction("b", probs=q64), VOCAB)]))


@pytest.mark.parametrize("pred, message", [  # the full-vector rejections of test_format, through a slot
    (Prediction("p", probs=np.ones(V - 1, dtype=np.float32) / (V - 1)), f"has {V - 1} entries"),
    (Prediction("p", probs=np.r_[np.full(3, 0.5), np.zeros(V - 3)].astype(np.float32)), "sums to 1.500000"),
    (Prediction("p", probs=np.r_[1.5, -0.5, np.zeros(V - 2)].astype(np.float32)), "probs\\[1\\] = -0.5"),
    (Prediction("p", probs=np.r_[np.nan, np.ones(V - 1) / (V - 1)].astype(np.float32)), "probs\\[0\\] = nan"),
    (Prediction("p", probs=np.r_[1.5, -0.5, np.zeros(V - 2)]), "probs\\[1\\] = -0.5"),
])
def test_check_into_a_slot_rejects_as_without(pred, message):
    for out in (None, np.empty(V)):
        with pytest.raises(PredictionError, match=message):
            check(pred, VOCAB, BG, out=out)


@pytest.mark.parametrize("zeros", [0, 50, V - 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_into_a_slot_gives_the_row_without(zeros, dtype):
    pred = Prediction("p", probs=vector(30, zeros=zeros).astype(dtype))
    plain, slot = check(pred, VOCAB, BG), np.empty(V)
    into = check(pred, VOCAB, BG, out=slot)
    for a, b in zip(plain, into, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
