"""The chunked cross-entropy is the exact loss: value and both gradients equal ``F.cross_entropy`` on the logits."""

from __future__ import annotations

import pytest
import torch

from predictors.train_loss import chunked_cross_entropy


@pytest.mark.parametrize("chunk", [1, 5, 37, 128])
def test_equals_cross_entropy_of_the_logits(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t)
    ref_gh, ref_gw = torch.autograd.grad(3.0 * ref, (h, w))
    loss = chunked_cross_entropy(h, w, t, chunk=chunk)
    gh, gw = torch.autograd.grad(3.0 * loss, (h, w))  # an upstream gradient other than 1 is applied
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert chunked_cross_entropy(h, w, t, chunk=chunk).item() == pytest.approx(ref.item(), rel=1e-12)


def test_float32_matches_to_float_rounding():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 16, generator=g, requires_grad=True)
    w = torch.randn(1000, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 1000, (64,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), t)
    ref.backward()
    ref_gw = w.grad.clone()
    w.grad = None
    chunked_cross_entropy(h, w, t, chunk=16).backward()
    torch.testing.assert_close(w.grad, ref_gw, rtol=1e-4, atol=1e-6)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\), \(10, 2\)"):
        chunked_cross_entropy(torch.zeros(4, 3), torch.zeros(10, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_cross_entropy(torch.zeros(4, 2), torch.zeros(10, 2), torch.zeros(4, dtype=torch.long), chunk=0)
