"""Human predictions through a web form: the FastAPI app (``app.create_app``), its database (``db``), the suite-side
logic (``game``: vocabulary, tokenization, practice feedback) and export to the standard predictions JSONL (``export``).
For trajectory suites the form asks whole-continuation questions instead (``trajectory``, ``trajectory_api``,
``trajectory_db``, ``trajectory_export``).

Lives in ``evals`` because practice feedback scores answers with ``evals.metrics``; imports stay one-way
(tasks <- predictors <- evals). Start it with ``logitpred serve --suite S``; see docs/human.md.
"""
