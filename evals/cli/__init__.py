"""The ``logitpred`` command line, one module per command group (after inspect-ai's ``_cli/``).

- ``common``: consoles, exit codes, progress bars and the argument types that validate input (exit 2);
- ``suite``: ``suite build | list | show``, ``truth``;
- ``predict``: ``predict``, ``run``;  ``score``: ``score``;
- ``predictors``: ``predictors list | build | indexes``;
- ``gate``: ``gate``, ``leaderboard``, ``report``;
- ``helpers``: ``helpers train | list``, ``approve``, ``approvals``, ``revoke``;
- ``human``: ``serve``, ``participants ...``, ``export``;
- ``rare``: ``rare build``, ``rare show`` (rare behaviours, ``tasks.rare``);
- ``search``: ``search`` (prompts that elicit a behaviour, ``tasks.search``).

Exit codes: 0 success, 1 the work failed (e.g. nothing valid to score), 2 bad input or configuration. Heavy libraries
(torch, transformers) load only inside the commands that need them, so ``--help`` is fast. A new command group is a
new module with a ``register(app)`` function, listed in ``GROUPS``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="logitpred: can you predict a language model's next-token distribution without running it?",
                  no_args_is_help=True, pretty_exceptions_enable=False)

GROUPS = ("suite", "predict", "score", "predictors", "gate", "helpers", "human", "rare", "versions", "search", "ladder")
for _group in GROUPS:
    importlib.import_module(f"{__name__}.{_group}").register(app)

__all__ = ["app"]
