"""Sparse scoring (named tokens + rest, in O(named)) against the dense float64 path (``evals.metrics``' reference
functions on ``densify``'s vectors): every metric equal to 1e-9 on random and edge-case predictions, on float32 and
float64 truth; with the float32 bulk pass for total variation and Jensen-Shannon, those two to 1e-6. Plus the truth
constants and their cache, and the validated rows' exact dense form and digest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from evals import metrics as M
from evals.sparse import TIE_TOLERANCE, score_rows, sparse_metrics
from predictors.digest import SubmissionDigest, predictions_digest
from predictors.format import Prediction, check, densify
from predictors.jsonl import validate, validate_file
from predictors.rows import PredictionRows
from tasks.truth_stats import cached_stats, compute_stats, topk_support
from tasks.vocab import Vocabulary

V = 256  # a power of two: 1/V and 127/128 / 254 are exact, so a named value can equal the uniform rest's value
DECOMPOSING = ("kl_nats", "kl_bits", "reverse_kl_nats", "brier", "top1", "top10_overlap", "ce_realized_nats",
               "target_ce_realized_nats", "target_entropy_nats")


def reference(t: np.ndarray, q: np.ndarray, x: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """The dense float64 path: evals.metrics' per-metric functions (each checked against scipy in test_metrics)."""
    kl = M.kl_divergence(t, q)
    rows = np.arange(len(q))
    return {"kl_nats": kl, "kl_bits": kl / np.log(2), "reverse_kl_nats": M.reverse_kl_divergence(t, q),
            "js_bits": M.js_divergence(t, q), "tv": M.total_variation_distance(t, q), "brier": M.brier_score_loss(t, q),
            "top1": M.top1_agreement_score(t, q), f"top{k}_overlap": M.topk_overlap_score(t, q, k=k),
            "ce_realized_nats": M.cross_entropy_loss(q, x), "target_ce_realized_nats": -t[rows, x].astype(np.float64),
            "target_entropy_nats": M.entropy(t)}


def assert_agree(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], tol: float = 1e-9,
                 tol_bulk: float = 1e-6) -> None:
    for col, want in ref.items():
        g = got[col]
        both_inf = np.isinf(g) & (g == want)
        assert (np.isinf(g) == np.isinf(want)).all(), col
        with np.errstate(invalid="ignore"):  # inf - inf where both are +inf
            diff = np.abs(np.where(both_inf, 0.0, g - want))
        limit = tol_bulk if col in ("js_bits", "tv") else tol
        assert diff.max() <= limit, f"{col}: max |sparse - dense| = {diff.max():.3g} at row {int(diff.argmax())}"


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary([f"t{i}" for i in range(V)], [f"t{i}" for i in range(V)])


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    """A smoothed unigram: most tokens share the smallest weight (ties), a few share larger ones."""
    counts = np.zeros(V)
    counts[:40] = np.repeat([50, 20, 20, 7, 7, 7, 3, 3], 5)
    b = counts + 1.0
    return b / b.sum()


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """float32 truth rows: random sharp and flat ones, masked tokens (-inf), ties at the top, a near one-hot row."""
    rng = np.random.default_rng(7)
    rows = [log_softmax(rng.normal(size=V) * s) for s in (0.5, 2.0, 3.0, 4.0, 6.0) for _ in range(6)]
    masked = rng.normal(size=V) * 2.0
    masked[:10] = -np.inf  # the target never produces tokens 0-9
    rows.append(log_softmax(masked))
    half = np.full(V, -np.inf)
    half[[3, 7]] = np.log(0.5)  # p = [.., 0.5, .., 0.5, ..]: two tokens, everything else masked
    rows.append(half)
    tied = rng.normal(size=V)
    tied[[5, 9, 11, 200]] = tied.max() + 1.0  # four tokens tie at the top: top-1 and top-10 share places
    rows.append(log_softmax(tied))
    top10_tie = np.sort(rng.normal(size=V))[::-1].copy()
    top10_tie[8:14] = top10_tie[8]  # six tokens tie across the 10th place
    rows.append(log_softmax(top10_tie))
    sure = np.full(V, -40.0)
    sure[17] = 0.0
    rows.append(log_softmax(sure))
    return np.array(rows, dtype=np.float32)


def make_predictions(truth: np.ndarray, rng: np.random.Generator) -> list[Prediction]:
    """Random top+rest predictions for every truth row, then the edge cases, each for several rows."""
    n = len(truth)
    preds = []
    for i in range(n):
        for rest in ("uniform", "unigram"):
            m = int(rng.integers(1, 30))
            ids = rng.choice(V, m, replace=False)
            if i % 2:
                ids[0] = int(np.argmax(truth[i]))  # the target's top token is named
                ids = np.unique(ids)
            mass = float(rng.uniform(0.05, 0.99))
            ps = rng.dirichlet(np.ones(len(ids))) * mass
            preds.append(Prediction(f"random-{rest}@{i}", [[int(a), float(b)] for a, b in zip(ids, ps, strict=True)], rest))
    top = [int(np.argmax(row)) for row in truth]
    edge = {
        "nothing-uniform": lambda i: Prediction("", {}, "uniform"),
        "nothing-unigram": lambda i: Prediction("", {}, "unigram"),
        "all-mass": lambda i: Prediction("", [[top[i], 0.7], [(top[i] + 1) % V, 0.3]], "uniform"),  # rescaled
        "over-one": lambda i: Prediction("", [[top[i], 0.9995], [(top[i] + 3) % V, 0.0009]], "unigram"),
        "below-floor": lambda i: Prediction("", [[top[i], 1 - 4e-7]], "uniform"),  # rest 4e-7 < 1e-6
        "top-only-unigram": lambda i: Prediction("", [[top[i], 0.6]], "unigram"),
        # named values equal to the uniform rest's value exactly (1/256 each, rest 127/128 over 254 tokens)
        "ties-with-rest": lambda i: Prediction("", [[top[i], 1 / 256], [(top[i] + 1) % V, 1 / 256]], "uniform"),
        "many-named": lambda i: Prediction("", [[j, 0.9 / 200] for j in range(200)], "uniform"),
        "all-named": lambda i: Prediction("", [[j, 1 / V] for j in range(V)], "uniform"),
        "zeros-full-vector": lambda i: Prediction("", probs=np.where(np.arange(V) < 8, 1 / 8, 0.0)),
        "dense-full-vector": lambda i: Prediction("", probs=np.exp(log_softmax(rng.normal(size=V)))),
    }
    for name, make in edge.items():
        for i in range(n):
            p = make(i)
            preds.append(Prediction(f"{name}@{i}", p.top, p.rest, p.probs))
    return preds


def rows_for(preds: list[Prediction], vocab: Vocabulary, bg: np.ndarray) -> PredictionRows:
    return PredictionRows.from_rows([check(p, vocab, bg) for p in preds], V, bg)


@pytest.mark.parametrize("dtype, float32_bulk", [(np.float32, False), (np.float64, False), (np.float32, True)])
def test_sparse_equals_dense_on_random_and_edge_predictions(truth, vocab, background, dtype, float32_bulk):
    rng = np.random.default_rng(0)
    t = truth.astype(dtype)
    preds = make_predictions(truth, rng)
    n = len(truth)
    tr = np.array([int(p.prompt_id.split("@")[1]) for p in preds])  # the truth row each prediction is for
    nxt = rng.integers(0, V, size=n)
    nxt[0] = int(np.argmax(truth[0]))  # the realized token is sometimes the top one
    rows = rows_for(preds, vocab, background)
    assert (~rows.is_full).sum() > 0.8 * len(preds)  # top + rest stays sparse; all-named and dense vectors are whole
    q = np.stack([densify(p, vocab, background) for p in preds])
    np.testing.assert_array_equal(rows.dense(), q)  # the stored form expands to densify's vectors, bit for bit
    stats = compute_stats(t, background, (1, 10))
    got = score_rows(rows, t, nxt, stats, truth_rows=tr, tv_js_float32=float32_bulk)
    ref = reference(t[tr], q, nxt[tr])
    assert list(got) == M.metric_columns(10)
    assert_agree(got, ref, tol_bulk=1e-6 if float32_bulk else 1e-9)
    # the edge cases behave as the format says
    by_id = {p.prompt_id: j for j, p in enumerate(preds)}
    masked_row = 30
    assert np.isinf(got["reverse_kl_nats"][by_id[f"nothing-uniform@{masked_row}"]])  # q > 0 where p = 0
    assert np.isfinite(got["kl_nats"][by_id[f"nothing-uniform@{masked_row}"]])
    j = by_id["below-floor@0"]
    assert q[j].sum() == pytest.approx(1.0) and q[j][np.argmax(truth[0])] == pytest.approx(1 - 1e-6)
    assert got["top1"][by_id["nothing-uniform@0"]] == pytest.approx(1 / V)  # a flat prediction earns 1/V


def test_kl_of_masked_truth_is_ln_1_25_sparse_as_dense(vocab, background):
    """p = [0.5, 0.5, 0, ..] against q naming both tokens at 0.4 (rest 0.2 over V-2 tokens): KL = ln 1.25."""
    t = np.full((1, V), -np.inf)  # float64 truth: log 0.5 is exact enough for 1e-12
    t[0, :2] = np.log(0.5)
    rows = rows_for([Prediction("p", [[0, 0.4], [1, 0.4]])], vocab, background)
    got = score_rows(rows, t, np.array([0]), compute_stats(t, background))
    assert got["kl_nats"][0] == pytest.approx(np.log(1.25), abs=1e-12)
    assert got["reverse_kl_nats"][0] == np.inf and got["target_entropy_nats"][0] == pytest.approx(np.log(2))


def test_uniform_rest_ties_give_the_dense_expected_top_k(vocab, background):
    """A uniform rest makes every unnamed token tie; named values equal to it tie with them too (exact here)."""
    t = log_softmax(np.linspace(3, -3, V))[None].astype(np.float32)  # target's top 10 = tokens 0..9
    preds = [Prediction("a", [[0, 1 / 256], [1, 1 / 256]]),  # both named values equal the rest's value 1/256
             Prediction("b", [[0, 0.5]]),  # top-1 certain; top-10: 9 places shared by 255 tied tokens
             Prediction("c", [[12, 0.2], [13, 0.2]])]  # named tokens outside the target's top 10
    rows = rows_for(preds, vocab, background)
    c = rows.rest[0] / (V - 2)
    assert rows.vals[0] == c == 1 / 256  # a three-way tie: named, named and 254 unnamed
    got = score_rows(rows, np.repeat(t, 3, axis=0), np.zeros(3, dtype=int), compute_stats(
        np.repeat(t, 3, axis=0), background), truth_rows=np.arange(3))
    ref = reference(np.repeat(t, 3, axis=0), rows.dense(), np.zeros(3, dtype=int))
    for col in ("top1", "top10_overlap"):
        np.testing.assert_allclose(got[col], ref[col], rtol=0, atol=1e-15)
    assert got["top1"][0] == pytest.approx(1 / V) and got["top10_overlap"][0] == pytest.approx(10 / V)
    assert got["top10_overlap"][1] == pytest.approx((1 + 9 * 9 / 255) / 10)
    assert got["top10_overlap"][2] == pytest.approx(8 / 254)  # 2 named outside; 8 places over 254 tied tokens


def test_unigram_near_ties_are_settled_on_the_exact_vector(vocab, background):
    """A named value equal to an unnamed unigram value at the k-th place: the dense path's normalizer decides the
    tie, so the sparse path computes that row's top-k on the exact dense vector."""
    rng = np.random.default_rng(3)
    t = log_softmax(rng.normal(size=(1, V)) * 2).astype(np.float32)
    base = Prediction("u", [[0, 0.1]], "unigram")
    row = check(base, vocab, background)
    q = densify(base, vocab, background)
    # name token 1 with exactly the value token 2 has under this rest: they tie (within the last bit)
    same = float(q[2])
    for k in (1, 3, 10):
        pred = Prediction("u", [[0, 0.1], [1, same]], "unigram")
        rows = rows_for([pred], vocab, background)
        qd = densify(pred, vocab, background)
        got = sparse_metrics(rows, t, np.array([0]), np.array([0]), compute_stats(t, background, (1, k)),
                             background, k=k)
        want = M.topk_overlap_score(t, qd[None], k=k)[0]
        assert got["topk"][0] == pytest.approx(want, abs=1e-15), k
    assert row.unigram and TIE_TOLERANCE < 1e-9


def test_rows_digest_and_take(vocab, background):
    rng = np.random.default_rng(1)
    preds = make_predictions(log_softmax(rng.normal(size=(3, V))).astype(np.float32), rng)
    rows = rows_for(preds, vocab, background)
    q = np.stack([densify(p, vocab, background) for p in preds])
    ids = [p.prompt_id for p in preds]
    order = rng.permutation(len(preds))
    shuffled = SubmissionDigest(ids)  # the rows taken in another order, hashed by their positions: the same digest
    shuffled.add_rows(order, rows.take(order))
    assert shuffled.hexdigest(ids) == predictions_digest(ids, rows)
    np.testing.assert_array_equal(rows.take(order).dense(), q[order])


def test_validated_files_stay_sparse_and_expand_to_densify(vocab, background, tmp_path):
    preds = [Prediction("p0", {"t3": 0.5, "t9": 0.25}, "unigram"), Prediction("p1", {}),
             Prediction("p2", probs=np.full(V, 1 / V)), Prediction("p3", [[5, 0.999]])]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in reversed(preds)))
    out = validate_file(path, [p.prompt_id for p in preds], vocab, background)
    assert out.prompt_ids == ["p0", "p1", "p2", "p3"] and out.errors == []
    assert list(out.rows.is_full) == [False, False, True, False]
    assert out.rows.full.shape == (1, V)  # only the full vector is held as one
    np.testing.assert_array_equal(out.probs, np.stack([densify(p, vocab, background) for p in preds]))
    again = validate([(None, p) for p in preds], [p.prompt_id for p in preds], vocab, background)
    assert again.digest() == out.digest()  # in-process or from a file: one submission
    # named rows are hashed as named (not expanded): the same distributions as whole vectors are another submission
    assert out.digest() != predictions_digest(out.prompt_ids, PredictionRows.from_dense(out.probs))


def test_truth_constants_match_direct_sums(truth, background):
    stats = compute_stats(truth, background, (1, 3, 10))
    t = truth.astype(np.float64)
    p = np.exp(t)
    fin = np.isfinite(t)
    t0 = np.where(fin, t, 0.0)
    np.testing.assert_allclose(stats.p_total, p.sum(1), rtol=1e-13)
    np.testing.assert_allclose(stats.p_log_p, (p * t0).sum(1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.p_sq, (p * p).sum(1), rtol=1e-12)
    np.testing.assert_array_equal(stats.n_masked, (~fin).sum(1))
    np.testing.assert_allclose(stats.t_sum, t0.sum(1), rtol=1e-12)
    np.testing.assert_allclose(stats.p_log_b, (p * np.log(background)).sum(1), rtol=1e-12)
    np.testing.assert_allclose(stats.b_p, (p * background).sum(1), rtol=1e-12)
    np.testing.assert_allclose(stats.b_t, (t0 * background).sum(1), rtol=1e-12)
    for k in (1, 3, 10):
        indptr, ids, incl = stats.topk[k]
        dense = np.zeros_like(t)
        dense[np.repeat(np.arange(len(t)), np.diff(indptr)), ids] = incl
        np.testing.assert_allclose(dense, M.topk_inclusion(t, k), rtol=0, atol=1e-15)  # ties share places
        assert np.allclose(dense.sum(1), k)
    assert np.diff(topk_support(truth, 10)[0]).tolist()[-2] == 14  # 8 above the 10th place, 6 tied at it


def test_truth_constants_cache_is_hash_checked(truth, background, tmp_path):
    first = cached_stats(tmp_path, "practice", truth, background)
    record = json.loads((tmp_path / "stats-practice.json").read_text())
    path = tmp_path / record["file"]
    assert path.is_file() and record["key"] == first.key
    again = cached_stats(tmp_path, "practice", truth, background)
    np.testing.assert_array_equal(again.p_log_p, first.p_log_p)
    mtime = path.stat().st_mtime_ns
    cached_stats(tmp_path, "practice", truth, background)
    assert path.stat().st_mtime_ns == mtime  # read, not rewritten
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # corrupt one byte: the file no longer matches its recorded sha256
    path.write_bytes(bytes(data))
    healed = cached_stats(tmp_path, "practice", truth, background)
    np.testing.assert_array_equal(healed.p_log_p, first.p_log_p)
    changed = truth.copy()
    changed[0, 0] -= 1.0  # new truth: a new key, recomputed, the old file removed
    other = cached_stats(tmp_path, "practice", changed, background)
    assert other.key != first.key and other.p_total[0] != first.p_total[0]
    assert len(list(tmp_path.glob("stats-practice-*.npz"))) == 1


def test_score_rows_needs_constants_for_the_rule_and_k(truth, vocab, background):
    rows = rows_for([Prediction("a", [[1, 0.5]], "unigram")], vocab, background)
    with pytest.raises(ValueError, match="background"):
        score_rows(rows, truth[:1], np.zeros(1, dtype=int), compute_stats(truth[:1]))
    with pytest.raises(ValueError, match="top-k tokens for k in"):
        score_rows(rows, truth[:1], np.zeros(1, dtype=int), compute_stats(truth[:1], background, (1, 10)), k=5)
