"""Trivial baselines that every leaderboard shows: ``uniform`` and ``unigram``.

``uniform`` names no candidate (all mass spread evenly): the floor any predictor must beat. ``unigram`` predicts the
train part's smoothed token frequencies whatever the prompt, expressed exactly in the format as ``rest: "unigram"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import PredictorContext, PromptView, register
from .format import Prediction


class RestOnly:
    def __init__(self, name: str, rest: str) -> None:
        self.name, self.rest = name, rest

    def predict(self, prompts: Sequence[PromptView]) -> list[Prediction]:
        return [Prediction(p.id, {}, self.rest) for p in prompts]


@register("uniform")
def uniform(ctx: PredictorContext) -> RestOnly:
    return RestOnly("uniform", "uniform")


@register("unigram")
def unigram(ctx: PredictorContext) -> RestOnly:
    return RestOnly("unigram", "unigram")
