"""The ``search_is`` estimator (issue 14 part 5): a search's found inputs as a fixed mixture proposal, exact weights.

The case is ``test_rare_estimators``'s: a tiny random-weight Gemma 3 that mostly echoes its last input token, a product
distribution of 3 free positions x 8 tokens whose last position puts 0.005 on token 35, the behaviour "continues with
35"; exact P_D(B) from enumerating all 512 inputs. Checked here: the proposal's density is a density (sums to 1 over
the support) and is what the sampler draws from, the estimate is unbiased over many seeds at both temperatures, the
budget is never exceeded and every pass is counted, a zero estimate is reported as zero.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.rare.estimators import estimate
from tasks.rare.estimators.search_is import log_mixture, sample_mixture
from tasks.rare.scorer import BehaviourScorer
from tests.tasks.test_rare_estimators import BOS, BUDGET, PREFIX, Case


@pytest.fixture(scope="module")
def case() -> Case:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Case()
    torch.set_num_threads(threads)


def _support(case: Case) -> np.ndarray:
    return np.concatenate([x for x, _ in case.dist.enumerate()])


@pytest.mark.parametrize("shape", ["kernel", "histogram"])
def test_the_proposal_density_sums_to_one_and_is_what_is_sampled(case, shape):
    x = _support(case)
    elites = x[[5, 77, 300, 511]]
    lq = log_mixture(x, case.dist, elites, alpha=0.1, rho=0.5, shape=shape)
    assert float(np.exp(lq).sum()) == pytest.approx(1.0, abs=1e-12)
    assert (lq >= math.log(0.1) + case.dist.log_prob(x) - 1e-12).all()  # q >= alpha p_D: every weight <= 1 / alpha
    draws = sample_mixture(200_000, case.dist, elites, np.random.default_rng(0), alpha=0.1, rho=0.5, shape=shape)
    row = {tuple(r): i for i, r in enumerate(x.tolist())}  # enumeration order
    freq = np.bincount([row[tuple(r)] for r in draws.tolist()], minlength=len(x)) / len(draws)
    q = np.exp(lq)
    big = q > 1e-3
    # empirical frequencies of the sampler against the exact density: within 5 binomial standard errors
    assert np.all(np.abs(freq[big] - q[big]) < 5 * np.sqrt(q[big] * (1 - q[big]) / len(draws)))
    none = log_mixture(x, case.dist, elites[:0], alpha=0.1, rho=0.5, shape=shape)
    np.testing.assert_allclose(none, case.dist.log_prob(x))  # no elite: q = D


@pytest.mark.parametrize("temperature", [1, 0])
def test_search_is_is_unbiased_and_beats_naive_at_the_same_budget(case, temperature):
    seeds = 100
    ests = [estimate("search_is", case.scorer, case.dist, budget=BUDGET, seed=s, temperature=temperature)
            for s in range(seeds)]
    v = np.array([e.value for e in ests])
    assert abs(v.mean() - case.exact[temperature]) < 4 * v.std(ddof=1) / math.sqrt(seeds)
    ratio = case.var1[temperature] / BUDGET / v.var(ddof=1)
    print(f"search_is vs naive variance ratio at temperature {temperature}, budget {BUDGET}: {ratio:.1f}; zero in "
          f"{int((v == 0).sum())} of {seeds}")
    assert ratio > 2
    assert all(e.details["search_passes"] <= BUDGET // 4 and e.samples == BUDGET - e.details["search_passes"]
               for e in ests)


@pytest.mark.parametrize("opts", [{}, {"method": "random"}, {"shape": "histogram"}, {"search_share": 0.0},
                                  {"search_share": 0.9, "restarts": 3, "search_width": 5}])
@pytest.mark.parametrize("budget", [64, 257])
def test_the_budget_is_never_exceeded_and_every_pass_is_counted(case, opts, budget):
    before = (case.scorer.passes.forward, case.scorer.passes.backward)
    e = estimate("search_is", case.scorer, case.dist, budget=budget, seed=3, temperature=0, **opts)
    assert (e.passes.forward, e.passes.backward) == (case.scorer.passes.forward - before[0],
                                                     case.scorer.passes.backward - before[1])
    assert e.passes.total == budget == e.budget  # the search's passes, then one forward per sample: all of it
    assert e.details["search_passes"] <= int(e.settings["search_share"] * budget)
    if opts.get("search_share") == 0.0:
        assert e.details["search_passes"] == 0 and e.details["elites"] == [] and e.samples == budget
    if opts.get("method") == "random":
        assert e.passes.backward == 0
    d = e.to_dict()
    assert d["passes"]["total"] == budget and d["estimator"] == "search_is"


def test_a_zero_estimate_is_reported_as_zero_with_its_budget(case):
    other = BehaviourScorer(case.model, bos_ids=BOS, prefix=PREFIX, members=[[3]], batch_size=512)
    assert other.greedy(_support(case)).sum() == 0  # token 3 is never the greedy continuation
    e = estimate("search_is", other, case.dist, budget=BUDGET, seed=0, temperature=0)
    assert e.value == 0.0 and e.zero and e.log10 is None and e.ci is None
    assert e.budget == BUDGET and e.passes.total == BUDGET and e.details["search_hits"] == e.details["hits"] == 0


def test_same_seed_same_estimate_and_bad_options_name_themselves(case):
    a, b = (estimate("search_is", case.scorer, case.dist, budget=200, seed=7) for _ in range(2))
    assert a.value == b.value and a.passes == b.passes and a.details["elites"] == b.details["elites"]
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"rho": 0.0}, {"search_share": 1.0}, {"method": "beam"},
                {"shape": "tree"}, {"restarts": 0}):
        with pytest.raises(ValueError, match="search_is needs"):
            estimate("search_is", case.scorer, case.dist, budget=200, seed=0, **bad)
    with pytest.raises(ValueError, match="too small for search_is"):
        estimate("search_is", case.scorer, case.dist, budget=20, seed=0)
    with pytest.raises(TypeError):
        estimate("search_is", case.scorer, case.dist, budget=200, seed=0, chains=3)
