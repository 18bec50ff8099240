"""Search for plausible prompts that make a behaviour likely (issue 14): maximise, for a grid of λ,

    J_λ(x) = log P_target(o | prefix + x) + λ · (1/k) log P_R(x | prefix)

over the ``k`` free tokens ``x`` of a template, within a budget of target passes, resumably.

- ``template.py``: the prefix + k free tokens, allowed tokens, the re-tokenization filter, ``SearchError``;
- ``reference.py``: R's plausibility (the target itself or a helper, same or other tokenizer) and proposals;
- ``objective.py``: J_λ from ``tasks.rare.scorer.BehaviourScorer`` and R; the budget rule (target passes);
- ``methods.py``: the registry and shared pieces; ``gcg.py`` (Zou et al. 2023), ``beam.py`` (BEAST, Sadasivan et al.
  2024), ``random_search.py`` (the baseline);
- ``frontier.py``: the Pareto frontier of log P(o | x) against per-token log P_R(x);
- ``state.py``: the resumable state file; ``driver.py``: ``run_search`` over behaviours × λ, and the result records.

Elsewhere: suites built from found prompts (``tasks.found``), the predictability gap (``evals.gap``), search as an
importance-sampling proposal (``tasks.rare.estimators.search_is``), the benchmark (``bench/search.py``).
"""

from . import beam, gcg, random_search  # noqa: F401  (registers the methods)
from .driver import SearchBehaviour, behaviour_from_text, results, run_search
from .frontier import is_frontier, merge
from .methods import REGISTRY
from .objective import Objective, Scores
from .reference import Reference
from .template import SearchError, Template, make_template

__all__ = ["REGISTRY", "Objective", "Reference", "Scores", "SearchBehaviour", "SearchError", "Template",
           "behaviour_from_text", "is_frontier", "make_template", "merge", "results", "run_search"]
