"""Compact truth and its commitment: float16 storage loses at most 1e-4 nats (mean KL, checked against scipy on real
wiki truth), the commitment binds prompts, target, dtype and stored truth, and a recomputation with other float
rounding (batch shapes, thread count: what another machine changes) verifies against it while a real change of truth,
another target or another dtype fails."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.special import rel_entr, softmax

from tasks import PRESETS, SuiteError, build_suite, load_suite
from tasks.quantize import (
    BYTES_PER_ENTRY,
    MAX_STORAGE_KL,
    VERIFY_MAX_KL,
    dequantize,
    quantize,
    row_kl,
    storage_error,
)


@pytest.fixture
def own_suite(target, tmp_path, monkeypatch):
    """A 3 + 3 prompt wiki suite with truth, in a home of its own (the tests change its truth)."""
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    cfg = dataclasses.replace(PRESETS["tiny"], name="commit", practice=3, sealed=3)
    suite = build_suite(cfg, target.tokenizer, target.identity, target.vocab_size)
    suite.compute_truth(target)
    return load_suite("commit")


def test_storage_is_two_bytes_per_entry_and_its_error_is_bounded(tiny_suite, target):
    """Mean KL(exact || stored) <= 1e-4 nats on real wiki truth, computed here with scipy and recorded in truth.json."""
    from tasks.compute import compute_truth

    prompts = tiny_suite.prompts("sealed")
    exact = compute_truth(target.model, prompts, bos_ids=tiny_suite.bos_ids)
    q, logz = quantize(exact)
    assert q.dtype == np.float16 and q.itemsize == BYTES_PER_ENTRY == 2
    stored = dequantize(q, logz)
    p = np.exp(exact.astype(np.float64))
    ref = rel_entr(p, np.exp(stored.astype(np.float64))).sum(axis=1)  # what consumers load: float32 q - logz
    np.testing.assert_allclose(storage_error(exact, q, logz), ref, rtol=1e-6, atol=1e-12)
    ideal = rel_entr(p, softmax(q.astype(np.float64), axis=1)).sum(axis=1)  # float16 alone, normalized in float64
    np.testing.assert_allclose(ref, ideal, rtol=1e-2)
    assert 0 < ref.mean() <= MAX_STORAGE_KL and ref.max() < VERIFY_MAX_KL
    np.testing.assert_allclose(np.log(np.exp(stored.astype(np.float64)).sum(axis=1)), 0, atol=1e-5)
    record = tiny_suite.truth_record()
    assert record["storage"]["bytes_per_entry"] == 2 and record["storage"]["dtype"] == "float16"
    assert record["storage"]["kl_exact_vs_stored"]["sealed"]["kl_mean"] == pytest.approx(ref.mean(), rel=1e-3)
    path = tiny_suite.truth_dir / record["files"]["sealed"]["file"]
    assert path.stat().st_size < 2.01 * q.size + 4096  # the file is the float16 array plus ids and row masses


def test_stored_files_are_memory_mapped(tiny_suite):
    from tasks.truth import load_stored

    arrays = load_stored(tiny_suite.truth_dir, tiny_suite.truth_record(), "sealed",
                         len(tiny_suite.prompts("sealed")), tiny_suite.name)
    assert isinstance(arrays["logp_f16"], np.memmap) and arrays["logp_f16"].dtype == np.float16


def test_row_kl_matches_scipy_including_zeros():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(size=(5, 50)) * 3, axis=1)
    q = softmax(rng.normal(size=(5, 50)) * 3, axis=1)
    p[0, :10] = 0
    p[0] /= p[0].sum()
    with np.errstate(divide="ignore"):
        got = row_kl(np.log(p), np.log(q))
    np.testing.assert_allclose(got, rel_entr(p, q).sum(axis=1), rtol=1e-12)
    q[1, np.argmax(p[1])] = 0  # mass where the reference has none: infinite
    with np.errstate(divide="ignore"):
        assert np.isinf(row_kl(np.log(p), np.log(q))[1])


def test_commitment_binds_prompts_target_dtype_and_stored_truth(own_suite):
    own_suite.verify_commitment()
    record = own_suite.truth_record()
    assert record["committed"]["dtype"] == "float32" and "device" not in record["committed"]
    assert record["placement"] == {"device": "cpu", "dtype": "float32"}
    folder = own_suite.truth_dir
    for field, value in (("dtype", "bfloat16"), ("sealed_prompts_sha256", "0" * 64)):
        edited = {**record, "committed": {**record["committed"], field: value}}
        (folder / "truth.json").write_text(json.dumps(edited))
        with pytest.raises(SuiteError, match="do not match the published commitment"):
            load_suite("commit").verify_commitment()
    (folder / "truth.json").write_text(json.dumps(record))
    load_suite("commit").verify_commitment()


def test_recomputation_with_other_rounding_verifies(own_suite, target):
    """Batch size 1 and one thread: other matrix shapes and summation order than the build (batch 8, all threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = own_suite.verify_recomputed(target, batch_size=1)
    finally:
        torch.set_num_threads(threads)
    assert report["ok"] and report["tolerance"] == VERIFY_MAX_KL
    for split in ("practice", "sealed"):
        r = report["splits"][split]
        assert r["rows_over"] == 0 and 0 < r["kl_mean"] <= r["kl_max"] <= VERIFY_MAX_KL


def test_rounding_noise_verifies_and_a_real_change_fails(own_suite, target):
    """Noise at float32 rounding scale (1e-6 relative) stays inside the tolerance; mixing 1% of the uniform
    distribution into one row (a real change of truth) is outside it."""
    from tasks.compute import compute_truth

    exact = compute_truth(target.model, own_suite.prompts("sealed"), bos_ids=own_suite.bos_ids)
    _, stored, _ = own_suite.truth_split("sealed")
    rng = np.random.default_rng(1)
    noisy = exact * (1 + 1e-6 * rng.standard_normal(exact.shape)).astype(np.float32)
    noisy -= np.log(np.exp(noisy.astype(np.float64)).sum(axis=1, keepdims=True)).astype(np.float32)
    assert row_kl(noisy, stored).max() <= VERIFY_MAX_KL
    changed = exact.copy()
    changed[1] = np.log(0.99 * np.exp(exact[1].astype(np.float64)) + 0.01 / exact.shape[1])
    kl = row_kl(changed, stored)
    assert kl[1] > 10 * VERIFY_MAX_KL and np.delete(kl, 1).max() <= VERIFY_MAX_KL


def test_changed_truth_fails_verification_naming_the_prompt(own_suite, target):
    from tasks.truth import write_truth

    arrays = {s: own_suite._exact(target, s, 8, None) for s in ("practice", "sealed")}
    logp, nxt = arrays["sealed"]
    changed = logp.copy()
    changed[2] = np.log(0.99 * np.exp(logp[2].astype(np.float64)) + 0.01 / logp.shape[1])
    arrays["sealed"] = (changed, nxt)
    record = own_suite.truth_record()
    base = {k: record[k] for k in ("suite", "version", "target", "placement")}
    ids = {s: [p.id for p in own_suite.prompts(s)] for s in ("practice", "sealed")}
    write_truth(own_suite.truth_dir, arrays, base, (own_suite.path / "sealed.jsonl").read_bytes(), ids)
    suite = load_suite("commit")
    suite.verify_commitment()  # it is a consistent, committed truth: only recomputing shows it is not the target's
    report = suite.verify_recomputed(target)
    assert not report["ok"]
    assert report["splits"]["sealed"]["rows_over"] == 1
    assert report["splits"]["sealed"]["worst_prompt"] == ids["sealed"][2]
    assert report["splits"]["practice"]["rows_over"] == 0


def test_another_dtype_is_another_truth(own_suite):
    from tasks import load_target

    bf16 = load_target(dtype="bfloat16")
    assert bf16.placement["dtype"] == "bfloat16"
    with pytest.raises(SuiteError, match="commitment is for float32 truth.*--dtype float32"):
        own_suite.verify_recomputed(bf16)
    with pytest.raises(SuiteError, match="float32 truth cached.*--rebuild"):
        own_suite.compute_truth(bf16)


def test_truth_of_an_older_format_is_recomputed_not_refused(own_suite, target):
    """Truth stored by format 2 (float32 arrays) is recomputed by `logitpred truth` / `suite build` without
    --rebuild; reading it is refused with the command that fixes it."""
    from tasks.truth import TRUTH_FORMAT

    path = own_suite.truth_dir / "truth.json"
    old = {**json.loads(path.read_text()), "format": "logitpred-truth/2"}
    path.write_text(json.dumps(old))
    with pytest.raises(SuiteError, match="format 'logitpred-truth/2'.*logitpred truth --suite commit --rebuild"):
        load_suite("commit").truth_split("sealed")
    suite = load_suite("commit")
    assert suite.compute_truth(target) == suite.commitment
    assert json.loads(path.read_text())["format"] == TRUTH_FORMAT


def test_unloadable_suite_names_are_not_built_errors(data_home):
    # a name the file system refuses (too long) is "not built", like any unknown name: no OSError traceback
    for name in ("x" * 300, "no-such-suite"):
        with pytest.raises(SuiteError, match="is not built: run `logitpred suite build"):
            load_suite(name)
