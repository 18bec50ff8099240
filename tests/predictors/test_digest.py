"""The holdout ledger's digest of a submission (``predictors.digest``): its definition, written out here; independent
of the order rows arrive in and of the chunking; named-token rows hashed as named, in O(named tokens) (never
expanded), so the same distribution as a whole vector is another submission; changed by any change of content;
versioned so it never equals a format-1 digest; the same for whole-continuation answers in any order."""

import hashlib
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from predictors.digest import PREFIX, SubmissionDigest, answers_digest, predictions_digest
from predictors.format import Prediction, densify
from predictors.jsonl import validate
from predictors.rows import PredictionRows

V = 64


def by_definition(ids, rows):
    """sha256 of the tag, json(ids) and each row's sha256: json(id) + "whole" + <f8 row, or for a named row (a tuple
    of ids, probabilities, rest, unigram, V, background) json(id) + "named" + <V, rest, rule, n> + ids + ps (+ bg)."""
    parts = []
    for i, row in zip(ids, rows, strict=True):
        head = json.dumps(i).encode()
        if isinstance(row, tuple):
            named, ps, rest, unigram, size, bg = row
            body = struct.pack("<qd?q", size, rest, unigram, len(named)) + np.asarray(named, "<i8").tobytes()
            body += np.asarray(ps, "<f8").tobytes() + (hashlib.sha256(bg.astype("<f8").tobytes()).digest()
                                                        if unigram else b"")
            parts.append(hashlib.sha256(head + b"\nnamed\n" + body).digest())
        else:
            parts.append(hashlib.sha256(head + b"\nwhole\n" + row.astype("<f8").tobytes()).digest())
    return "v2:" + hashlib.sha256(b"logitpred/predictions/2\n" + json.dumps(ids).encode() + b"\n"
                                  + b"".join(parts)).hexdigest()


@pytest.fixture
def split():
    rng = np.random.default_rng(7)
    q = rng.random((9, V)) + 0.01
    return [f"p{i}" for i in range(9)], q / q.sum(axis=1, keepdims=True)


def test_the_digest_is_its_definition_whatever_the_order_and_chunks(split):
    ids, probs = split
    want = by_definition(ids, probs)
    assert predictions_digest(ids, PredictionRows.from_dense(probs)) == want
    for chunk in (1, 2, 4, 9):  # rows arriving out of order, a chunk at a time, as a stream of a shuffled file
        order = np.random.default_rng(chunk).permutation(len(ids))
        d = SubmissionDigest(ids)
        for a in range(0, len(ids), chunk):
            d.add(order[a:a + chunk], probs[order[a:a + chunk]])
        assert d.hexdigest(ids) == want, chunk


def test_only_the_accepted_rows_count_and_each_once(split):
    ids, probs = split
    accepted = [ids[i] for i in (0, 3, 5)]
    d = SubmissionDigest(ids)
    d.add(np.array([5, 0]), probs[[5, 0]])
    with pytest.raises(ValueError, match="not those of the accepted"):
        d.hexdigest(accepted)  # p3 accepted but never hashed
    d.add(np.array([3]), probs[[3]])
    assert d.hexdigest(accepted) == by_definition(accepted, probs[[0, 3, 5]])
    with pytest.raises(ValueError, match="not those of the accepted"):
        d.hexdigest(accepted[:2])  # p5 hashed but not accepted
    with pytest.raises(ValueError, match="hashed twice"):
        d.add(np.array([0]), probs[[0]])
    with pytest.raises(ValueError, match="2 positions for 1 rows"):
        SubmissionDigest(ids).add(np.array([1, 2]), probs[[1]])


def test_any_change_of_content_changes_the_digest(split):
    ids, probs = split
    base = by_definition(ids, probs)
    bumped = probs.copy()
    bumped[4, 7] = np.nextafter(bumped[4, 7], 1)  # one float, one ulp
    swapped = probs[[1, 0, *range(2, 9)]]  # two rows trade prompts
    fewer = predictions_digest(ids[:-1], PredictionRows.from_dense(probs[:-1]))
    others = {predictions_digest(ids, PredictionRows.from_dense(bumped)),
              predictions_digest(ids, PredictionRows.from_dense(swapped)), fewer}
    assert len(others) == 3 and base not in others
    old = hashlib.sha256(json.dumps(ids).encode() + probs.tobytes()).hexdigest()  # format 1, as ledgers hold it
    assert base.startswith(PREFIX) and not old.startswith(PREFIX) and base != old


def test_named_rows_are_hashed_as_named_never_expanded(monkeypatch):
    from predictors import format as fmt
    from tasks.vocab import Vocabulary

    vocab = Vocabulary([f"t{i}" for i in range(V)], [f"t{i}" for i in range(V)])
    bg = np.arange(1, V + 1, dtype=np.float64)
    bg /= bg.sum()
    named = [Prediction("a", {"t9": 0.25, "t3": 0.5}, "unigram"), Prediction("b", {}, "uniform")]
    checked = validate([(None, p) for p in named], ["a", "b"], vocab, bg)
    assert list(checked.rows.is_full) == [False, False]
    monkeypatch.setattr(fmt, "expand", lambda *a, **k: pytest.fail("a named row was expanded to be hashed"))
    got = checked.digest()
    assert got == by_definition(["a", "b"], [([3, 9], [0.5, 0.25], 0.25, True, V, bg), ([], [], 1.0, False, V, bg)])
    monkeypatch.undo()
    whole = [Prediction(p.prompt_id, probs=densify(p, vocab, bg)) for p in named]
    assert validate([(None, p) for p in whole], ["a", "b"], vocab, bg).digest() != got  # counted, never missed
    other_bg = validate([(None, p) for p in named], ["a", "b"], vocab, bg[::-1].copy()).digest()
    assert other_bg != got  # the background spreads the unigram rest: part of the row


def test_answers_digest_ignores_their_order_not_their_values():
    answers = [SimpleNamespace(prompt_id=f"p{i % 3}", continuation_id=f"c{i}", logprob=-0.5 * i - 0.1)
               for i in range(6)]
    d = answers_digest(answers)
    assert d == answers_digest(answers[::-1]) and d.startswith(PREFIX)
    triples = sorted([a.prompt_id, a.continuation_id, a.logprob] for a in answers)
    assert d == "v2:" + hashlib.sha256(b"logitpred/answers/2\n" + json.dumps(triples).encode()).hexdigest()
    changed = [*answers[:-1], SimpleNamespace(prompt_id="p2", continuation_id="c5", logprob=-2.6000000000000005)]
    assert answers_digest(changed) != d
