"""Cached truth equals a direct single-prompt forward pass, whatever the batch size (padding must not leak); for the
default target (Llama architecture) the model's own forward equals the former decoder + output-layer path; stored truth
with NaN or +inf is refused by name, -inf (masked tokens) loads. Other architectures: ``test_architectures.py``."""

import numpy as np
import pytest
from scipy.special import logsumexp

from tasks.compute import compute_truth, direct_truth
from tasks.quantize import STORED_ATOL, STORED_RTOL


def test_cached_truth_is_normalized_log_probs(tiny_suite):
    for split in ("practice", "sealed"):
        ids, logp, nxt = tiny_suite.truth_split(split)
        assert logp.dtype == np.float32 and logp.shape == (len(ids), tiny_suite.vocab_size)
        np.testing.assert_allclose(logsumexp(logp.astype(np.float64), axis=1), 0.0, atol=1e-4)
        assert list(nxt) == [p.next_token_id for p in tiny_suite.prompts(split)]


def test_cached_truth_equals_direct_forward_pass(tiny_suite, target):
    prompts = tiny_suite.prompts("practice")[:4]
    for p in prompts:
        ref = direct_truth(target.model, p.token_ids, bos_ids=tiny_suite.bos_ids)
        np.testing.assert_allclose(tiny_suite.truth(p.id), ref, rtol=STORED_RTOL, atol=STORED_ATOL)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batch_size_does_not_change_truth(tiny_suite, target, batch_size):
    prompts = tiny_suite.prompts("sealed")
    _, cached, _ = tiny_suite.truth_split("sealed")
    got = compute_truth(target.model, prompts, bos_ids=tiny_suite.bos_ids, batch_size=batch_size)
    np.testing.assert_allclose(got, cached, rtol=STORED_RTOL, atol=STORED_ATOL)  # cached: float16 storage


def test_several_cuts_of_one_document_share_a_pass(target, tiny_suite):
    """Prompts cut from the same document at different points get the same answers as separate passes."""
    base = tiny_suite.prompts("practice")[0]

    class P:  # two cuts of one document
        def __init__(self, i, n):
            self.id, self.doc, self.token_ids = f"x{i}", base.doc, base.token_ids[:n]

    cuts = [P(0, 8), P(1, len(base.token_ids))]
    got = compute_truth(target.model, cuts, batch_size=2)
    for row, p in zip(got, cuts, strict=True):
        np.testing.assert_allclose(row, direct_truth(target.model, p.token_ids), atol=1e-4)


def test_own_forward_keeps_the_default_targets_truth(target, tiny_suite):
    """SmolLM2 (Llama: no logit scaling or capping) is probed into one batched call per batch, and its truth from the
    model's own forward equals the former hand-rolled path (decoder, then the tied output layer) to float rounding."""
    import torch

    from tasks.forward import check_causal_lm

    assert check_causal_lm(target.model) == "rows"
    _, cached, _ = tiny_suite.truth_split("sealed")
    with torch.inference_mode():
        for row, p in zip(cached, tiny_suite.prompts("sealed"), strict=True):
            hidden = target.model.get_decoder()(input_ids=torch.tensor([list(p.token_ids)])).last_hidden_state
            old = torch.log_softmax(target.model.get_output_embeddings()(hidden[0, -1]).float(), dim=-1).numpy()
            np.testing.assert_allclose(row, old, rtol=STORED_RTOL, atol=STORED_ATOL)


def _stored(tiny_suite, folder, split, logp, nxt, poke=None):
    """Write ``logp``/``nxt`` as a split's truth file in ``folder`` (float16 and row log-mass, as write_truth stores
    them; ``poke = (row, col, value)`` is then written into the float16 array) with a record naming it."""
    import hashlib

    from safetensors.numpy import save

    from tasks.quantize import quantize
    from tasks.truth import TRUTH_FORMAT

    q, logz = quantize(logp)
    if poke is not None:
        q[poke[0], poke[1]] = poke[2]
    data = save({"logp_f16": q, "logz": logz, "next_token_id": nxt})
    sha = hashlib.sha256(data).hexdigest()
    (folder / f"{split}-{sha[:16]}.safetensors").write_bytes(data)
    entry = {"file": f"{split}-{sha[:16]}.safetensors", "sha256": sha}
    return {"format": TRUTH_FORMAT, "suite": tiny_suite.name, "version": tiny_suite.version,
            "target": tiny_suite.target, "placement": {"device": "cpu", "dtype": "float32"}, "committed": {},
            "files": {"practice": entry, "sealed": entry}, "commitment": "0" * 64}


@pytest.mark.parametrize(("value", "word"), [(np.nan, "NaN"), (np.inf, r"\+inf")])
def test_nan_and_plus_inf_in_stored_truth_are_refused(tiny_suite, tmp_path, value, word):
    import json

    from tasks import SuiteError
    from tasks.truth import load_split, read_record

    ids, logp, nxt = tiny_suite.truth_split("practice")
    record = _stored(tiny_suite, tmp_path, "practice", logp, nxt, poke=(2, 5, value))
    (tmp_path / "truth.json").write_text(json.dumps(record))
    record = read_record(tmp_path, name="tiny", version=tiny_suite.version, target_id=tiny_suite.target["id"])
    with pytest.raises(SuiteError, match=rf"truth of suite 'tiny' \(practice\) row 2 \(prompt {ids[2]}\) holds "
                                         rf"{word} at token id 5.*logitpred truth --suite tiny --rebuild"):
        load_split(tmp_path, record, "practice", ids, "tiny")


def test_minus_inf_in_stored_truth_is_legitimate(tiny_suite, tmp_path):
    from tasks.truth import load_split

    ids, logp, nxt = tiny_suite.truth_split("practice")
    masked = logp.copy()
    masked[1, 7] = -np.inf  # a token the target masks out
    record = _stored(tiny_suite, tmp_path, "practice", masked, nxt)
    got, got_nxt = load_split(tmp_path, record, "practice", ids, "tiny")
    assert got[1, 7] == -np.inf and list(got_nxt) == list(nxt)
    np.testing.assert_allclose(got[0], logp[0], rtol=STORED_RTOL, atol=STORED_ATOL)


def test_nan_from_the_target_is_never_written(tiny_suite, tmp_path):
    from tasks import SuiteError
    from tasks.truth import write_truth

    ids, logp, nxt = tiny_suite.truth_split("sealed")
    bad = logp.copy()
    bad[0, 0] = np.nan
    arrays = {"practice": (logp, nxt), "sealed": (bad, nxt)}
    with pytest.raises(SuiteError, match=rf"\(sealed\) row 0 \(prompt {ids[0]}\) holds NaN.*nothing was written"):
        write_truth(tmp_path, arrays, {"suite": "tiny"}, b"", {"practice": ids, "sealed": ids})
    assert list(tmp_path.iterdir()) == []
