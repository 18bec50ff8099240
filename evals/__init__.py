"""evals: metrics, scoring, run records, leaderboards and the ``logitpred`` CLI."""
