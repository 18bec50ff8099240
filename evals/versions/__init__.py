"""Versions of a target, measured: drift between neighbours, the gate per version, the previous version as a
predictor of the next, approval of a version (``measure``); building a series and its report (``series``).
Truth per version is ``tasks.versions``; the ``version:NAME`` predictor is ``predictors.version``."""

from .measure import approve_version, compare_previous, drift, gate_version, team_of
from .series import build_series, load_built, render, series_report

__all__ = ["approve_version", "build_series", "compare_previous", "drift", "gate_version", "load_built", "render",
           "series_report", "team_of"]
