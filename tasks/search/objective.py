"""The search objective: ``J_λ(x) = log P_target(B | prefix + x) + λ · (1/k) log P_R(x | prefix)``.

The first term is exact from the target (``tasks.rare.scorer.BehaviourScorer.evaluate``: the chain rule over each
member of the behaviour B, members summed; the greedy indicator "the greedy continuation starts with a member of B"
from the same pass). The second is the reference model's per-token plausibility of the free tokens
(``tasks.search.reference``). λ = 0 is pure elicitation (GCG's objective, Zou et al. 2023); λ > 0 trades
success for fluency as ARCA does (Jones et al. 2023: log P(o | x) plus a weighted log P(x)).

**Budget, in target passes** (identical for every method, so random search at the same budget is a fair baseline):
one forward of one prompt through the target is one pass, one backward one more (``BehaviourScorer.passes``); when R
*is* the target, its passes (plausibility of each candidate, proposals, the head once) are target passes too and are
counted. A helper R's passes are reported apart (``reference_passes``), not budgeted. Every candidate evaluated costs
``cost_per_candidate`` = 1 (+1 when R is the target); ``spent()`` reads the counters, never a formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..rare.scorer import BehaviourScorer, Passes
from .reference import Reference
from .template import Template


@dataclass
class Scores:
    """Per candidate row: ``log_p`` log P(B | prefix + x) (natural log), ``ref`` log P_R(x | prefix) (total),
    ``ref_tokens`` target tokens of x it covers, ``greedy`` whether greedy decoding starts with a member of B,
    ``value`` J_λ. All ``(n,)``."""

    log_p: np.ndarray
    ref: np.ndarray
    ref_tokens: np.ndarray
    greedy: np.ndarray
    value: np.ndarray

    @property
    def ref_per_token(self) -> np.ndarray:
        return np.where(self.ref_tokens > 0, self.ref / np.maximum(self.ref_tokens, 1), 0.0)


class Objective:
    """J_λ for one behaviour (``scorer``'s members; ``behaviour_text``: its text when it was given as one, for the
    re-tokenization check), one ``template``, one ``reference`` R, one ``lam`` (λ >= 0)."""

    def __init__(self, scorer: BehaviourScorer, reference: Reference, template: Template, lam: float, *,
                 behaviour_text: str | None = None, proposer: Reference | None = None) -> None:
        if not (lam >= 0 and np.isfinite(lam)):
            raise ValueError(f"λ must be a finite number >= 0, got {lam!r}")
        self.scorer, self.reference, self.template, self.lam = scorer, reference, template, float(lam)
        self.behaviour_text = behaviour_text
        self.member = list(scorer.members[0]) if behaviour_text is not None else None
        # BEAST's proposals come from R when it speaks the target's tokens, else from the target itself
        self.proposer = proposer or reference

    @property
    def cost_per_candidate(self) -> int:
        """Target passes one candidate costs (module doc)."""
        return 1 + int(self.reference.is_target)

    def spent(self) -> int:
        """Target passes spent so far (module doc)."""
        refs = {id(self.reference): self.reference, id(self.proposer): self.proposer}
        return self.scorer.passes.total + sum(r.passes for r in refs.values() if r.is_target)

    def counters(self) -> dict[str, int]:
        """Every counter, for the search state: target forward/backward, R's passes, and the proposer's when it is
        not R (else 0)."""
        return {"forward": self.scorer.passes.forward, "backward": self.scorer.passes.backward,
                "reference": self.reference.passes,
                "proposer": self.proposer.passes if self.proposer is not self.reference else 0}

    def restore(self, c: dict[str, int]) -> None:
        """Set the counters from ``counters()`` (a resumed search continues the count)."""
        self.scorer.passes = Passes(int(c["forward"]), int(c["backward"]))
        self.reference.passes = int(c["reference"])
        if self.proposer is not self.reference:
            self.proposer.passes = int(c["proposer"])

    def valid(self, free: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: rows that re-tokenize (``Template.valid``, behaviour text included)."""
        return self.template.valid(free, self.behaviour_text, self.member)

    def evaluate(self, free: np.ndarray) -> Scores:
        """``Scores`` of every row of ``free`` ``(n, i)`` (``i <= k``: BEAST scores partial prompts). Costs
        ``cost_per_candidate`` target passes per row (+ a helper R's pass)."""
        free = np.asarray(free, dtype=np.int64)
        log_p, greedy = self.scorer.evaluate(free)
        ref, n_ref = self.reference.plausibility(free)
        per = np.where(n_ref > 0, ref / np.maximum(n_ref, 1), 0.0)
        return Scores(log_p, ref, n_ref, greedy, log_p + self.lam * per)

    def gradient_scores(self, free: Sequence[int]) -> tuple[np.ndarray, float]:
        """GCG's token scores ``(k, V)`` at the current prompt and its log P(B | x): the gradient of log P(B | x) with
        respect to the one-hot free tokens (Zou et al. 2023), plus, when R speaks the target's tokens and λ > 0,
        ``(λ / k) log p_R(v | prefix, x_<j)`` at position j (the fluency term of AutoDAN, Zhu et al. 2023, which
        ignores a token's effect on later positions' plausibility). Costs a forward and a backward (+1 R pass)."""
        x = np.asarray(free, dtype=np.int64)[None]
        lp, grad = self.scorer.log_prob_and_grad(x)
        scores = grad[0].astype(np.float64)
        if self.lam > 0 and self.reference.same_tokenizer:
            k = x.shape[1]
            nxt = np.empty((k, scores.shape[1]))
            head = self.reference.head_logprobs()
            nxt[0] = head[: scores.shape[1]] if head is not None else 0.0
            if k > 1:
                nxt[1:] = self.reference.step_logprobs(x)[0, :-1, : scores.shape[1]]
            scores += self.lam / k * nxt
        return scores, float(lp[0])
