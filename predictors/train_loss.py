"""The exact next-token cross-entropy of a tied-embedding language model, computed in row chunks on the CPU.

With SmolLM2's 49,152-token vocabulary the output layer dominates a small helper: for 768 tokens per step the logits
are a 768 x 49,152 float32 matrix (151 MB), and the stock path (``lm_head`` then ``F.cross_entropy``) writes it, reads
it for ``log_softmax``, writes its gradient, reads that again for the weight gradient: memory traffic that a 2-core
machine pays in full. Here each chunk of ``chunk`` rows makes its logits, their log-sum-exp, and its gradients
(``softmax - onehot``) at once while they are still in cache, and drops them. The loss is the same function,

    loss = (1/N) * sum_i [ logsumexp_v(h_i . w_v) - h_i . w_{t_i} ],

with gradients dloss/dh_i = (1/N) (softmax(h_i W^T) - e_{t_i}) W and dloss/dW = (1/N) sum_i (softmax - e_{t_i})^T h_i;
only the order of float additions differs from ``F.cross_entropy`` (tests compare both). Nothing is sampled or
approximated. Left out: ``ignore_index`` and label smoothing (the trainer's packed windows have no padding).
"""

from __future__ import annotations

from typing import Any

CHUNK = 128  # rows per chunk: 128 x 49,152 float32 logits = 25 MB; measured fastest of 32/128/512 (bench/train.py)


def chunked_cross_entropy(hidden: Any, weight: Any, targets: Any, *, chunk: int = CHUNK) -> Any:
    """Mean cross-entropy (nats/token) of ``softmax(hidden @ weight.T)`` against ``targets``, differentiable in
    ``hidden`` and ``weight``.

    hidden: float tensor (N, d), the final-norm hidden states; weight: (V, d), the output (tied embedding) matrix;
    targets: int64 (N,) in [0, V). Returns a 0-dim tensor. When gradients are off (``torch.no_grad``/``inference_mode``
    or neither input needs them) only the loss is computed. Raises ``ValueError`` on mismatched shapes.
    """
    import torch

    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1] or targets.shape != hidden.shape[:1]:
        raise ValueError(f"chunked_cross_entropy: need hidden (N, d), weight (V, d), targets (N,); got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCE.apply(hidden, weight, targets, chunk)
    total = hidden.new_zeros((), dtype=torch.float64)
    for i in range(0, hidden.shape[0], chunk):
        z = hidden[i : i + chunk] @ weight.t()
        total += float((torch.logsumexp(z, 1) - z.gather(1, targets[i : i + chunk, None])[:, 0]).sum())
    return (total / hidden.shape[0]).to(hidden.dtype)


def _chunked_ce_class() -> Any:
    import torch

    class ChunkedCE(torch.autograd.Function):
        """Forward computes the loss and both gradients chunk by chunk; backward only scales them."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
            n = hidden.shape[0]
            grad_h = torch.empty_like(hidden)
            grad_w = torch.zeros_like(weight)
            total = torch.zeros((), dtype=torch.float64)
            for i in range(0, n, chunk):
                h, t = hidden[i : i + chunk], targets[i : i + chunk]
                z = h @ weight.t()  # (c, V) logits of this chunk only
                lse = torch.logsumexp(z, 1)
                total += float((lse - z.gather(1, t[:, None])[:, 0]).sum())
                z.sub_(lse[:, None]).exp_()  # softmax, in place
                z[torch.arange(t.shape[0]), t] -= 1.0  # softmax - onehot = dloss_i/dlogits_i (times N)
                torch.mm(z, weight, out=grad_h[i : i + chunk])
                grad_w.addmm_(z.t(), h)
            ctx.save_for_backward(grad_h, grad_w)
            ctx.n = n
            return (total / n).to(hidden.dtype)

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:
            grad_h, grad_w = ctx.saved_tensors
            scale = grad_out / ctx.n
            return grad_h * scale, grad_w * scale, None, None

    return ChunkedCE


class _Lazy:
    """Builds the autograd Function on first use, so importing this module does not import torch."""

    cls: Any = None

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if cls.cls is None:
            cls.cls = _chunked_ce_class()
        return cls.cls.apply(*args)


_ChunkedCE = _Lazy
