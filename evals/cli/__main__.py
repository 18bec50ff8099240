"""``python -m evals.cli``: the same as the ``logitpred`` command."""

from . import app

app(prog_name="logitpred")
