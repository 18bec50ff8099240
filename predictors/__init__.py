"""predictors: what produces predictions of the target's next-token distribution.

``Predictor`` protocol and registry (``register``, ``create``, ``available``), the prediction format and its validator
(``Prediction``, ``densify``, ``validate``), the built-in predictors, and the one approval check (``require_approved``,
applied by ``create``: an unapproved helper runs only with ``allow_unapproved=True``).
"""

from .approval import ApprovalError, require_approved
from .base import (
    Predictor,
    PredictorContext,
    PromptView,
    available,
    create,
    create_with_approval,
    register,
    view,
)
from .format import Prediction, PredictionError, densify
from .jsonl import iter_jsonl, json_line, read_jsonl, readable, validate, validate_file, write_jsonl
from .rows import ValidatedPredictions

__all__ = [
    "ApprovalError", "Prediction", "PredictionError", "Predictor", "PredictorContext", "PromptView",
    "ValidatedPredictions", "available", "create", "create_with_approval", "densify", "iter_jsonl", "json_line",
    "read_jsonl", "readable", "register", "require_approved", "validate", "validate_file", "view", "write_jsonl",
]
