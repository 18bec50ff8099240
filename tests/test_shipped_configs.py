"""Every config the repository ships at its root parses with the loader its command uses: a renamed key or a stale
path in gate.yaml, ladder.yaml, rare.yaml, versions.yaml or versions-ladder.yaml fails here, not in a user's run."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gate_and_ladder_configs_parse():
    from evals.gate import load_config
    from evals.ladder import load_ladder

    gate = load_config(REPO / "gate.yaml")
    assert gate.name == "smollm2-release" and [m.name for m in gate.members] == ["uniform", "unigram", "ngram"]
    ladder = load_ladder(REPO / "ladder.yaml")
    assert [r.name for r in ladder.rungs] == ["5m", "10m", "20m"]
    assert [r.train["hidden"] for r in ladder.rungs] == [96, 160, 256]  # growing sizes, as docs/ladder.md says


def test_version_series_parse_and_keep_their_order():
    from tasks.versions.spec import load_series

    quant = load_series(REPO / "versions.yaml")
    assert [v.name for v in quant.versions] == ["float32", "bfloat16", "int8"]
    ckpt = load_series(REPO / "versions-ladder.yaml")
    assert [v.name for v in ckpt.versions] == ["step-500", "step-1000", "step-1500", "step-2000"]
    assert list(ckpt.suites) == ["smol-v"]


def test_rare_spec_parses():
    from tasks.rare.spec import read_spec

    spec = read_spec(REPO / "rare.yaml")
    assert len(spec.distributions) >= 4  # issue 13: at least four input distributions
