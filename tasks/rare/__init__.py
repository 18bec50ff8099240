"""Rare behaviours: how likely is the target to produce a bad output under an input distribution, when sampling almost
never sees it (issue 13).

Modules, one idea each: ``behaviours`` (prefix-free sets of target token sequences), ``distributions`` (products of
per-position token distributions, suite prompts), ``scorer`` (P(B | x) from the target: cached prefix, greedy
indicator, gradient with respect to the input tokens).
"""

from .behaviours import Behaviour, BehaviourError, from_texts, from_token, prefix_free
from .distributions import DistributionError, ProductDistribution, SuiteDistribution, token_list
from .scorer import BehaviourScorer, Passes

__all__ = ["Behaviour", "BehaviourError", "BehaviourScorer", "DistributionError", "Passes", "ProductDistribution",
           "SuiteDistribution", "from_texts", "from_token", "prefix_free", "token_list"]
