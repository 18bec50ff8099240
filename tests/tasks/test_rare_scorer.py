"""P(B | x) for rare-behaviour estimation (issue 13 part 1): prefix-free behaviours, product distributions, and the
scorer's three paths (cached prefix, greedy indicator, gradient) against independent references: the chain-rule truth
of ``tasks.continuations`` (itself checked against next-token passes), argmax along the teacher-forced path, and
autograd through the one-hot encoding. Tiny random-weight models of real architectures."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.rare.behaviours import BehaviourError, from_texts, from_token, prefix_free
from tasks.rare.distributions import DistributionError, ProductDistribution
from tasks.rare.scorer import BehaviourScorer
from tests.tasks.tiny_models import tiny

V = 64
BOS = [1]
PREFIX = [5, 9, 11]
MEMBERS = [[7], [3, 4], [3, 8, 2]]


def _dist():
    ids = (np.array([10, 12, 14]), np.array([20, 21]), np.array([30, 31, 32, 33]))
    probs = (np.array([0.5, 0.3, 0.2]), np.array([0.9, 0.1]), np.full(4, 0.25))
    return ProductDistribution("d", tuple(PREFIX), "", ids, probs)


def test_prefix_free_and_token_behaviours():
    assert prefix_free([[3, 4], [3], [3, 4, 5], [7], [7]]) == ((3,), (7,))
    assert prefix_free(MEMBERS) == ((3, 4), (3, 8, 2), (7,))
    with pytest.raises(BehaviourError, match="empty"):
        prefix_free([[1], []])
    assert from_token("t", 5, V).members == ((5,),)
    with pytest.raises(BehaviourError, match="not a token id"):
        from_token("t", V, V)


def test_product_distribution_enumerates_its_support_exactly():
    d = _dist()
    xs, lps = zip(*d.enumerate(batch=5), strict=True)
    x, lp = np.concatenate(xs), np.concatenate(lps)
    assert len(x) == d.support_size == 24 and len({tuple(r) for r in x.tolist()}) == 24
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(d.log_prob(x), lp)
    assert d.log_prob(np.array([[11, 20, 30]]))[0] == -np.inf
    s = d.sample(20000, np.random.default_rng(0))
    assert np.mean(s[:, 1] == 20) == pytest.approx(0.9, abs=0.01)
    with pytest.raises(DistributionError, match="sum"):
        ProductDistribution("bad", (), "", (np.array([1, 2]),), (np.array([0.5, 0.6]),))


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_scorer_matches_the_chain_rule_and_autograd(kind):
    import torch

    from tasks.continuations import chain_rule_truth

    model = tiny(kind, V)
    members = prefix_free(MEMBERS)
    sc = BehaviourScorer(model, bos_ids=BOS, prefix=PREFIX, members=members, batch_size=5)
    x = np.concatenate([b for b, _ in _dist().enumerate()])
    got = sc.log_prob(x)
    assert sc.passes.forward == len(x)
    # reference: per (input, member) chain-rule truth (tasks.continuations), summed over the disjoint members
    items = [(PREFIX + list(r), list(m)) for r in x.tolist() for m in members]
    truth = chain_rule_truth(model, items, bos_ids=BOS, share_prefix=False)
    want = np.log(np.exp([t.logprob for t in truth]).reshape(len(x), -1).sum(axis=1))
    np.testing.assert_allclose(got, want, atol=1e-4)
    # greedy indicator: every member token is the argmax along its own teacher-forced path
    hits = sc.greedy(x)
    full = chain_rule_truth(model, [(a, b, True) for a, b in items], bos_ids=BOS, share_prefix=False)
    ref = np.array([any(np.array_equal(f.full.argmax(axis=1), m) for f, m in zip(full[i * 3:(i + 1) * 3], members,
                                                                                 strict=True))
                    for i in range(len(x))])
    np.testing.assert_array_equal(hits, ref)
    # gradient: value equals the cached path; gradient equals autograd through onehot @ embed(arange(V))
    val, grad = sc.log_prob_and_grad(x[:4])
    np.testing.assert_allclose(val, got[:4], atol=1e-4)
    assert grad.shape == (4, 3, V) and sc.passes.backward == 4
    emb = model.get_input_embeddings()
    table = emb(torch.arange(V)).detach()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(x[:4]), V).float().requires_grad_(True)
    head = emb(torch.tensor(BOS + PREFIX))[None].expand(4, -1, -1)
    lps = []
    for m in members:
        seq = torch.cat([head, onehot @ table, emb(torch.tensor(m[:-1], dtype=torch.long))[None].expand(4, -1, -1)],
                        dim=1)
        lp = torch.log_softmax(model(inputs_embeds=seq).logits[:, -len(m):].float(), dim=-1)
        lps.append(lp.gather(-1, torch.tensor(m)[None, :, None].expand(4, -1, 1))[..., 0].double().sum(1))
    torch.logsumexp(torch.stack(lps, 1), 1).sum().backward()
    np.testing.assert_allclose(grad, onehot.grad.numpy(), atol=1e-4, rtol=1e-3)
    # the greedy indicator read from the gradient's forward equals the cached path's, at no extra pass
    f0, b0 = sc.passes.forward, sc.passes.backward
    val2, grad2, hit2 = sc.log_prob_grad_greedy(x)
    np.testing.assert_array_equal(hit2, ref)
    np.testing.assert_allclose(val2, got, atol=1e-4)
    assert (sc.passes.forward - f0, sc.passes.backward - b0) == (len(x), len(x))


def test_behaviour_texts_must_tokenize_as_themselves(target):
    tok = target.tokenizer
    b = from_texts("swear", [" damn", " damn it", " hell"], tok, context="Well, I said")
    assert len(b.members) == 2  # " damn it" starts with " damn": contained in its event
    with pytest.raises(BehaviourError, match="does not tokenize as itself"):
        from_texts("glued", ["ing"], tok, context="The runn")
