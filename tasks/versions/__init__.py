"""Versions of a target: a series of versions (checkpoints, precisions, quantizations, fine-tunes) of one model,
asked the same prompts; truth per version, cached and committed.

``spec``: the series file (``load_series``); ``model``: a version's identity, loading and log-probabilities;
``truth``: truth per version (``build_version_truth``, ``VersionSuite``), the series record and ``find_version``.
Scoring, drift, the gate per version and reports are ``evals.versions``; the ``version:NAME`` predictor is
``predictors.version``.
"""

from .model import VersionIdentity, load_version, version_identity, version_logprobs
from .spec import PRESETS, SeriesSpec, VersionsError, VersionSpec, load_series
from .truth import (
    VersionSuite,
    build_version_truth,
    check_versions,
    find_version,
    load_suites,
    read_series_records,
    series_dir,
    version_suite,
    write_series_record,
)

__all__ = [
    "PRESETS", "SeriesSpec", "VersionIdentity", "VersionSpec", "VersionSuite", "VersionsError", "build_version_truth",
    "check_versions", "find_version", "load_series", "load_suites", "load_version", "read_series_records",
    "series_dir", "version_identity", "version_logprobs", "version_suite", "write_series_record",
]
