"""Trajectory suites: per prompt, whole continuations (realized, sampled, given) and their truth by the chain rule.

A suite built with ``continuation = M > 0`` (``tasks.suite.SuiteConfig``) carries each prompt's realized continuation
in its prompt files; its continuation sets and their truth are built with the target (``build_trajectories``), stored
apart from the prompts, and committed (``trajectory_commitment``, extending the next-token commitment). Modules, one
idea each: ``spec`` (the manifest section, settings, ids), ``behaviours`` (behaviour files, given continuations),
``sets`` (the continuations of a prompt), ``store`` (files, record, commitment), ``build`` (build, load, verify),
``questions`` (what a split shows and asks), ``steps`` (step-wise questions along the samples, released one step at a
time by ``evals.stepwise``).

Left out here: recomputing trajectory truth on other hardware against the commitment (``verify_trajectories`` checks
hashes only).
"""

from .behaviours import Behaviour, parse_behaviours, read_behaviours
from .build import SplitTrajectories, Trajectories, build_trajectories, load_trajectories, verify_trajectories
from .questions import asked, next_token_questions, questions
from .sets import Continuation, shown_continuations
from .spec import TrajectorySpec, spec
from .steps import StepPlan, StepQuestion, step_plan
from .store import trajectory_dir

__all__ = [
    "Behaviour", "Continuation", "SplitTrajectories", "Trajectories", "TrajectorySpec", "asked",
    "build_trajectories", "load_trajectories", "next_token_questions", "parse_behaviours", "questions",
    "read_behaviours", "shown_continuations", "spec", "step_plan", "StepPlan", "StepQuestion", "trajectory_dir",
    "verify_trajectories",
]
