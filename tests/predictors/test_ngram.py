"""Kneser-Ney n-gram: formulas against a direct dict-based implementation, train-part-only training, index lifecycle
(reuse, rebuild on change, corrupted and stale indexes), bad input, and the CLI build command."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from predictors import PredictorContext, create
from predictors.index import IndexFileError, index_dir, training_text
from predictors.ngram import FALLBACK_DISCOUNTS, NGramModel, build_tables, discounts


def reference_kn(docs: list[list[int]], order: int, V: int):
    """Interpolated modified KN written straight from Chen & Goodman's formulas, over Python dicts.

    Same conventions as the predictor: n-grams stay inside documents, a document start counts as one distinct left
    neighbour for continuation counts, the lowest order interpolates with the uniform 1/V."""
    raw = [Counter() for _ in range(order + 1)]
    left = [defaultdict(set) for _ in range(order + 1)]
    for d in docs:
        for i in range(len(d)):
            for k in range(1, min(order, i + 1) + 1):
                g = tuple(d[i - k + 1 : i + 1])
                raw[k][g] += 1
                left[k][g].add(d[i - k] if i - k >= 0 else "<s>")
    adj = [{}] + [{g: raw[k][g] if k == order else len(left[k][g]) for g in raw[k]} for k in range(1, order + 1)]
    D = [None]
    for k in range(1, order + 1):
        n = [sum(1 for a in adj[k].values() if a == r) for r in (1, 2, 3, 4)]
        try:
            y = n[0] / (n[0] + 2 * n[1])
            d = [r - (r + 1) * y * n[r] / n[r - 1] for r in (1, 2, 3)]
            assert all(0 < x < r for x, r in zip(d, (1, 2, 3), strict=True))
        except (ZeroDivisionError, AssertionError):
            d = list(FALLBACK_DISCOUNTS)
        D.append(d)

    def p(w: int, h: tuple[int, ...]) -> float:
        k = len(h) + 1
        lower = 1.0 / V if k == 1 else p(w, h[1:])
        kids = {g[-1]: a for g, a in adj[k].items() if g[:-1] == h}
        total = sum(kids.values())
        if total == 0:
            return lower
        disc = {x: D[k][min(a, 3) - 1] for x, a in kids.items()}
        first = (kids[w] - disc[w]) / total if w in kids else 0.0
        return first + sum(disc.values()) / total * lower

    return p


def _flat(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([t for d in docs for t in d], dtype=np.int64),
            np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64))


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_matches_direct_formula_implementation(order: int) -> None:
    rng = random.Random(order)
    V = 11
    alphabet = [0, 1, 2, 3, 3, 4, 5, 6, 6, 6, 7]  # skewed, so counts of counts 1..4 all occur; 8..10 never seen
    docs = [[rng.choice(alphabet) for _ in range(rng.randint(1, 60))] for _ in range(25)]
    model = NGramModel(build_tables(*_flat(docs), order, V), order, V)
    ref = reference_kn(docs, order, V)
    contexts = [docs[0][:12], docs[3], [6, 6, 6, 6], [9, 10], [], [3], [7, 3, 6, 2], docs[5][:2]]
    rows = model.distributions(contexts)
    for c, row in zip(contexts, rows, strict=True):
        h = tuple(c[-(order - 1):]) if order > 1 and c else ()
        expected = np.array([ref(w, h) for w in range(V)])
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-12)
        assert row.sum() == pytest.approx(1.0, abs=1e-12) and np.all(row > 0)


def test_discounts_follow_chen_goodman_and_fall_back_when_undefined() -> None:
    a = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [9])
    y = 10 / (10 + 2 * 4)
    assert discounts(a) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3))
    assert discounts(np.array([1, 1, 5])) == FALLBACK_DISCOUNTS  # n2 = n3 = 0: undefined, KenLM's fallback


def _corpus(tmp: Path, docs: dict[str, str], name: str = "corpus.jsonl") -> str:
    path = tmp / name
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return str(path)


def _docs(n: int = 40) -> dict[str, str]:
    rng = random.Random(0)
    words = "the river flows north into a lake near old town where people fish and sing in summer".split()
    return {f"d{i}": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for i in range(n)}


@pytest.fixture(scope="module")
def ctx(tiny_suite) -> PredictorContext:
    return PredictorContext.from_suite(tiny_suite)


def test_trains_only_on_the_train_part(ctx: PredictorContext, tmp_path: Path) -> None:
    from tasks.corpora import read_corpus, split_documents

    docs = _docs()
    marked = {k: v + " Zorblaxian quibbleforth" for k, v in docs.items()}  # the marker words go in every doc ...
    path = _corpus(tmp_path, marked)
    train, held = split_documents(read_corpus(path), seed=ctx.seed, heldout_fraction=ctx.heldout_fraction)
    assert held and train
    for d in train:  # ... then are removed again from the train docs, so only held-out text has them
        marked[d.id] = docs[d.id]
    path = _corpus(tmp_path, marked)
    tok = ctx.tokenizer()
    marker = set(tok(" Zorblaxian quibbleforth", add_special_tokens=False)["input_ids"])
    marker -= {t for d in train for t in tok(docs[d.id], add_special_tokens=False)["input_ids"]}
    assert marker, "the marker must have token ids that no train document has"

    text = training_text([path], ctx, vocab_size=ctx.vocab_size)
    expected = sum(len(tok(docs[d.id], add_special_tokens=False)["input_ids"]) for d in train)
    assert text.tokens.size == expected and text.documents == len(train)
    p = create("ngram", ctx, corpora=path, order=3)
    seen = set(np.asarray(p.model.keys[0]).tolist())
    assert not (marker & seen)
    assert p.manifest["corpora"][0]["tokens"] == expected


def test_special_token_strings_in_training_text_are_text(ctx: PredictorContext, tmp_path: Path) -> None:
    """A train document containing "<|endoftext|>" and "<|im_start|>" is encoded as text: its token stream holds no
    control token id (the plain ``add_special_tokens=False`` encoding would hold 0 and 1) and decodes back to it."""
    from tasks.corpora import read_corpus, split_documents
    from tasks.tokens import encode_text, special_ids

    docs = {k: v.replace(" lake ", " lake <|endoftext|> ").replace(" town ", " <|im_start|>town ")
            for k, v in _docs().items()}
    path = _corpus(tmp_path, docs, "specials.jsonl")
    train, _ = split_documents(read_corpus(path), seed=ctx.seed, heldout_fraction=ctx.heldout_fraction)
    with_marks = [d for d in train if "<|endoftext|>" in d.text]
    assert len(with_marks) >= 10
    tok = ctx.tokenizer()
    special = special_ids(tok)
    assert {0, 1} <= set(tok(with_marks[0].text, add_special_tokens=False)["input_ids"])  # the old encoding
    text = training_text([path], ctx, vocab_size=ctx.vocab_size)
    assert not set(np.unique(text.tokens).tolist()) & special
    docs_ids = [text.tokens[a:b].tolist() for a, b in zip(text.offsets[:-1], text.offsets[1:], strict=True)]
    assert docs_ids == [encode_text(tok, d.text) for d in train]
    assert tok.decode(docs_ids[train.index(with_marks[0])]) == with_marks[0].text


def test_index_is_reused_and_rebuilt_when_inputs_change(ctx: PredictorContext, tmp_path: Path) -> None:
    path = _corpus(tmp_path, _docs())
    first = create("ngram", ctx, corpora=path, order=3)
    again = create("ngram", ctx, corpora=path, order=3)
    assert again.manifest["index"] == first.manifest["index"]
    assert again.manifest["built"] == first.manifest["built"]  # loaded, not rebuilt
    assert create("ngram", ctx, corpora=path, order=2).manifest["index"] != first.manifest["index"]
    docs = _docs()
    docs["d0"] = "an entirely new first document about mountains."
    changed = create("ngram", ctx, corpora=_corpus(tmp_path, docs), order=3)  # same path, new text: new index
    assert changed.manifest["index"] != first.manifest["index"]
    m = json.loads((index_dir("ngram", first.manifest["index"].split("-", 1)[1]) / "manifest.json").read_text())
    assert m["params"] == {"order": 3, "vocab_size": ctx.vocab_size} and m["seed"] == ctx.seed
    assert m["tokenizer_sha256"] == ctx.tokenizer_sha256 and m["corpora"][0]["name"] == path


def test_corrupted_or_stale_index_gives_a_clear_error_and_rebuild_fixes_it(ctx, tmp_path: Path) -> None:
    path = _corpus(tmp_path, _docs(30))
    good = create("ngram", ctx, corpora=path, order=2)
    folder = index_dir("ngram", good.manifest["index"].split("-", 1)[1])
    contexts = [[5, 6, 7], [8]]
    expected = good.model.distributions(contexts)
    arr = folder / "alpha2.npy"
    data = bytearray(arr.read_bytes())
    data[-3] ^= 0xFF
    arr.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=r"alpha2.npy.*does not match.*--rebuild"):
        create("ngram", ctx, corpora=path, order=2)
    fixed = create("ngram", ctx, corpora=path, order=2, rebuild=True)
    np.testing.assert_array_equal(fixed.model.distributions(contexts), expected)

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["params"]["order"] = 4
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match=r"stale.*params.*--rebuild"):
        create("ngram", ctx, corpora=path, order=2)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="no readable manifest"):
        create("ngram", ctx, corpora=path, order=2)
    create("ngram", ctx, corpora=path, order=2, rebuild=True)


def test_bad_input_errors(ctx: PredictorContext, tmp_path: Path) -> None:
    empty = _corpus(tmp_path, {"a": "", "b": "   "}, "empty.jsonl")
    with pytest.raises(IndexFileError, match="has no text"):
        create("ngram", ctx, corpora=empty)
    with pytest.raises(KeyError, match="unknown predictor 'ngramm'.*ngram"):
        create("ngramm", ctx)
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        create("ngram", ctx, order=0)
    with pytest.raises(IndexFileError, match="unknown corpus"):
        create("ngram", ctx, corpora=str(tmp_path / "missing.jsonl"))


def test_full_vocabulary_rows_on_real_prompts(ctx: PredictorContext, tiny_suite, tmp_path: Path) -> None:
    from predictors.base import view

    p = create("ngram", ctx, corpora=_corpus(tmp_path, _docs()), order=4)
    prompts = [view(x) for x in tiny_suite.prompts("practice")]
    preds = p.predict(prompts)
    rows = np.stack([x.probs for x in preds])
    assert rows.shape == (len(prompts), ctx.vocab_size) and rows.dtype == np.float64
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(rows > 0)
    one_by_one = np.stack([p.predict([q])[0].probs for q in prompts])  # batching changes nothing
    np.testing.assert_allclose(one_by_one, rows, rtol=0, atol=1e-15)


def test_cli_build_and_indexes(tiny_suite, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from evals.cli import app

    path = _corpus(tmp_path, _docs(20))
    runner = CliRunner()
    r = runner.invoke(app, ["predictors", "build", "ngram", "--suite", "tiny", "-O", f"corpora={path}", "-O",
                            "order=2"])
    assert r.exit_code == 0, r.output
    assert "ngram ready for suite tiny" in r.output
    r = runner.invoke(app, ["predictors", "indexes"])
    assert r.exit_code == 0 and "ngram-" in r.output
    r = runner.invoke(app, ["predictors", "build", "no-such-predictor", "--suite", "tiny"])
    assert r.exit_code == 2 and "unknown predictor" in r.output
