"""predictors: what produces predictions of the target's next-token distribution.

``Predictor`` protocol and registry (``register``, ``create``, ``available``), the prediction format and its validator
(``Prediction``, ``densify``, ``validate``), and the built-in predictors.
"""

from .base import Predictor, PredictorContext, PromptView, available, create, register, view
from .format import (
    Prediction,
    PredictionError,
    ValidatedPredictions,
    densify,
    read_jsonl,
    validate,
    write_jsonl,
)

__all__ = [
    "Prediction", "PredictionError", "Predictor", "PredictorContext", "PromptView", "ValidatedPredictions",
    "available", "create", "densify", "read_jsonl", "register", "validate", "view", "write_jsonl",
]
