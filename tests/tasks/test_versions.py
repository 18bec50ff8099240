"""Versions of a target: the series file, truth per version (real SmolLM2 float32 / bfloat16 / int8 dynamic on the
tiny suite) against independent forwards, commitments, and bad input naming the version (approvals untouched)."""

import copy

import numpy as np
import pytest

from tests.tasks.versions_fixtures import bad_series, quant_series, tiny_folder


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_series_file_parses_presets_and_relative_paths(tmp_path):
    from tasks.versions import load_series

    (tmp_path / "ft").mkdir()
    spec = load_series(_write(tmp_path, "version: 1\nname: s\nsuites: [wiki]\nversions:\n"
                                        "  - {name: a, preset: 'smollm2:int8'}\n  - {name: b, model: ft, dtype: bfloat16}\n"))
    assert [v.to_dict() for v in spec.versions] == [
        {"name": "a", "model": "default", "dtype": "float32", "quantize": "int8-dynamic"},
        {"name": "b", "model": str((tmp_path / "ft").resolve()), "dtype": "bfloat16", "quantize": "none"}]
    assert spec.baseline == "ngram" and spec.gate is None


@pytest.mark.parametrize("versions, needle", [
    ("  - {name: a, model: default}\n  - {name: a, model: default}\n", "version 'a' is listed twice"),
    ("  - {name: a, model: default}\n  - {name: b}\n", "version 'b'"),
    ("  - {name: a, model: default}\n  - {name: b, preset: 'smollm2:int4'}\n", "version 'b'.preset"),
    ("  - {name: a, model: default}\n  - {name: b, model: default, quantize: int8-dynamic, dtype: bfloat16}\n",
     "version 'b'"),
    ("  - {name: a, model: default}\n", "at least two versions"),
])
def test_series_file_errors_name_the_version(tmp_path, versions, needle):
    from tasks.versions import VersionsError, load_series

    with pytest.raises(VersionsError, match=None) as e:
        load_series(_write(tmp_path, f"version: 1\nname: s\nsuites: [wiki]\nversions:\n{versions}"))
    assert needle in str(e.value)


def test_truth_per_version_matches_independent_forwards(tiny_suite, target):
    import torch
    from scipy.stats import entropy

    from evals.versions import drift, load_built
    from tasks.compute import direct_truth
    from tasks.quantize import STORED_ATOL, STORED_RTOL

    built = load_built(quant_series(tiny_suite))
    f32, bf16, int8 = (built[n]["tiny"] for n in ("f32", "bf16", "int8"))
    # the float32 reference is the suite's own target: the same truth, the same identity
    assert f32.target["id"] == tiny_suite.target["id"]
    np.testing.assert_allclose(f32.truth_split("sealed")[1], tiny_suite.truth_split("sealed")[1], atol=1e-6)
    # int8: one plain forward of a freshly quantized copy of the target, prompt by prompt
    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(target.model), {torch.nn.Linear}, dtype=torch.qint8)
    ids, stored, _ = int8.truth_split("sealed")
    for i, p in enumerate(tiny_suite.prompts("sealed")[:3]):
        exact = direct_truth(q, p.token_ids, bos_ids=tiny_suite.bos_ids)
        tol = STORED_RTOL * np.abs(exact) + STORED_ATOL
        finite = np.isfinite(exact)
        assert np.all(np.abs(stored[i][finite] - exact[finite]) <= tol[finite])
    # every version's commitment checks out, and the three identities differ
    for vs in (f32, bf16, int8):
        vs.verify_commitment()
    assert len({vs.target["id"] for vs in (f32, bf16, int8)}) == 3
    # drift KL(bf16 || f32) against scipy's relative entropy, row by row
    d = drift(f32, bf16, "practice")
    pa, pb = (np.exp(v.truth_split("practice")[1].astype(np.float64)) for v in (f32, bf16))
    ref = [entropy(b, a) for a, b in zip(pa, pb, strict=True)]
    assert d["kl_nats"][0] == pytest.approx(np.mean(ref), rel=1e-4)  # scipy renormalizes float32 rows
    assert d["kl_max"] == pytest.approx(max(ref), rel=1e-4)
    assert d["kl_nats"][1] <= d["kl_nats"][0] <= d["kl_nats"][2]
    # bfloat16 of the same weights moves far less than int8 dynamic quantization does
    assert d["kl_nats"][0] < drift(bf16, int8, "practice")["kl_nats"][0]


def _approvals_bytes():
    from predictors.approval import registry_path

    p = registry_path()
    return p.read_bytes() if p.is_file() else None


@pytest.mark.parametrize("case", ["missing", "tokenizer", "vocabulary", "nan"])
def test_bad_version_names_the_version_and_leaves_approvals(tiny_suite, tmp_path, case):
    from evals.versions import build_series
    from tasks.versions import VersionsError, load_series

    quant_series(tiny_suite)  # a registry may exist from other tests: it must stay byte for byte
    before = _approvals_bytes()
    tok = tiny_suite.path / "tokenizer"
    model = {"missing": lambda: tmp_path / "no-such-rung",
             "tokenizer": lambda: tiny_folder(tmp_path / "m", tok, vocab=64, extra_token=True),
             "vocabulary": lambda: tiny_folder(tmp_path / "m", tok, vocab=1000),
             "nan": lambda: tiny_folder(tmp_path / "m", tok, vocab=tiny_suite.vocab_size, nan=True)}[case]()
    spec = load_series(bad_series(tmp_path, str(model)))
    with pytest.raises(VersionsError) as e:
        build_series(spec)
    assert "version 'rung2'" in str(e.value)
    assert {"missing": "does not exist", "tokenizer": "another tokenizer", "vocabulary": "vocabulary of 1000",
            "nan": "NaN"}[case] in str(e.value)
    assert _approvals_bytes() == before
