"""Step-wise questions along the target's samples: released one step at a time, never a token ahead.

A ``sampled`` continuation ``y = y_1 .. y_m`` of prompt ``x`` is never shown whole (a sample of the target is itself
information about the target). It is asked *step by step*: the question of step ``t`` (1-based) is the step prompt
``x + y_<t`` and asks for the target's next-token distribution there, in the next-token prediction format. Step 1 is
the prompt itself. Identical step prompts (every sample of a prompt at step 1; samples that share a prefix) are one
question; its id is ``<prompt_id>:s<k>@<t-1>``, k the first sample with that prefix (stable: it depends on the
samples only). A step question shows ``y_<t`` and nothing after it: the questions of step ``t`` only ever reveal
tokens that earlier steps asked about, so releasing step ``t`` once step ``t-1`` is committed (``evals.stepwise``)
means no predictor sees ``y_t`` before its prediction for step ``t`` is in.

Why step 1 is asked although the realized continuation is shown: its answer is the target's distribution at the
prompt, scored against the target's samples (KL divergence; cross-entropy on the *sampled* token), never on the
document's token, so the shown realized continuation does not give it away (``tasks.trajectory.questions``).

``StepPlan`` (``step_plan(suite, split)``) holds one split's samples, so it lives on the harness side only: a
predictor receives a released step question's id, text and token ids (``evals.stepwise``), never the plan. ``truth(t)`` gives
the stored full distributions (``tasks.trajectory.store``) of every sample that reaches step ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..truth import SuiteError
from .spec import require


@dataclass(frozen=True)
class StepQuestion:
    """One step question: ``id``, the ``prompt_id`` it continues, ``step`` t (1-based: it predicts y_t),
    ``token_ids`` (prompt + y_<t), ``text`` (the prompt's text at step 1, else the target tokenizer's decode of
    ``token_ids``) and ``samples`` (positions, in the split's continuation list, of the samples it stands for)."""

    id: str
    prompt_id: str
    step: int
    token_ids: tuple[int, ...]
    text: str
    samples: tuple[int, ...]

    def line(self) -> dict[str, Any]:
        """What a predictor sees (``suite questions --round t``): the next-token question's ``prompt_id`` (this step
        question's id), ``text``, ``token_ids``, and ``of_prompt`` and ``step``."""
        return {"prompt_id": self.id, "text": self.text, "token_ids": list(self.token_ids),
                "of_prompt": self.prompt_id, "step": self.step}


@dataclass(frozen=True)
class StepTruth:
    """The truth of step ``t`` at every sample reaching it, aligned: ``samples`` (n,) int64 positions in the split's
    continuation list, ``question`` (n,) int64 positions in ``StepPlan.questions(t)``, ``logp`` (n, V) float32
    natural-log next-token distributions (stored float16 + log-mass, ``tasks.quantize``), ``sampled`` (n,) int64
    the token each sample drew at step t."""

    samples: np.ndarray
    question: np.ndarray
    logp: np.ndarray
    sampled: np.ndarray


class StepPlan:
    """One split's step questions (module doc). Build with ``step_plan``."""

    def __init__(self, suite: Any, split: str) -> None:
        from .build import load_trajectories

        sp = require(suite)
        if not sp.k:
            raise SuiteError(f"suite {suite.name!r} has no sampled continuations: step-wise questions need "
                             "--samples K >= 1 at build time")
        self.suite, self.split = suite, split
        self.truth_split = load_trajectories(suite).split(split)
        conts = self.truth_split.continuations
        self.samples = [i for i, c in enumerate(conts) if c.kind == "sampled"]
        self.prompts = {p.id: p for p in suite.prompts(split)}
        self.rounds = max((len(conts[i].token_ids) for i in self.samples), default=0)
        self._questions: dict[int, list[StepQuestion]] = {}
        self._tokenizer: Any = None

    @property
    def commitment(self) -> str:
        """The trajectory commitment the samples belong to (a rounds ledger is kept per commitment)."""
        from .build import load_trajectories

        return load_trajectories(self.suite).commitment

    def _check(self, t: int) -> None:
        if not 1 <= t <= self.rounds:
            raise SuiteError(f"step {t} does not exist: the {self.split} split of suite {self.suite.name!r} has "
                             f"steps 1 to {self.rounds}")

    def questions(self, t: int) -> list[StepQuestion]:
        """The distinct step questions of step ``t`` (1-based), in prompt order then sample order. Raises
        ``SuiteError`` for a step outside 1 .. ``rounds``."""
        self._check(t)
        if t not in self._questions:
            conts = self.truth_split.continuations
            seen: dict[tuple[str, tuple[int, ...]], int] = {}
            out: list[StepQuestion] = []
            for i in self.samples:
                c = conts[i]
                if len(c.token_ids) < t:
                    continue  # this sample ended (EOS) before step t
                shown = c.token_ids[: t - 1]
                key = (c.prompt_id, shown)
                if key in seen:
                    q = out[seen[key]]
                    out[seen[key]] = StepQuestion(q.id, q.prompt_id, q.step, q.token_ids, q.text, (*q.samples, i))
                    continue
                prompt = self.prompts[c.prompt_id]
                ids = tuple(prompt.token_ids) + shown
                text = prompt.text if t == 1 else self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
                seen[key] = len(out)
                out.append(StepQuestion(f"{c.id}@{t - 1}", c.prompt_id, t, ids, text, (i,)))
            self._questions[t] = out
        return self._questions[t]

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self.suite.tokenizer()
        return self._tokenizer

    def truth(self, t: int) -> StepTruth:
        """``StepTruth`` of step ``t`` (every sample reaching it, in sample order)."""
        qs = self.questions(t)
        where = {i: j for j, q in enumerate(qs) for i in q.samples}
        samples = np.array(sorted(where), dtype=np.int64)
        tr = self.truth_split
        rows = np.empty((len(samples), self.suite.vocab_size), dtype=np.float32)
        for r, i in enumerate(samples):
            rows[r] = tr.full(int(i))[t - 1]
        sampled = np.array([tr.continuations[int(i)].token_ids[t - 1] for i in samples], dtype=np.int64)
        return StepTruth(samples, np.array([where[int(i)] for i in samples], dtype=np.int64), rows, sampled)

    def sample_ids(self) -> list[str]:
        """The continuation ids of the split's samples, in order."""
        return [self.truth_split.continuations[i].id for i in self.samples]

    def lengths(self) -> np.ndarray:
        """int64 (n_samples,): the steps each sample reaches."""
        return np.array([len(self.truth_split.continuations[i].token_ids) for i in self.samples], dtype=np.int64)


def step_plan(suite: Any, split: str) -> StepPlan:
    """The ``StepPlan`` of ``split`` of a trajectory suite with samples. Raises ``SuiteError`` for a next-token suite,
    a suite without samples, an unknown split, or trajectories not built yet."""
    from ..truth import SPLITS

    if split not in SPLITS:
        raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return StepPlan(suite, split)
