"""Helper training with checkpoints: a killed run resumes to the weights of an uninterrupted one, checkpointing does
not change the result, and every checkpoint is a loadable helper with its step and validation loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from predictors.train_helper import MANIFEST, TrainConfig, helper_context, train_helper
from tasks.io import read_json

CFG = TrainConfig(corpora=("wiki",), steps=6, batch_size=2, context=16, hidden=32, layers=1, heads=2, warmup=2,
                  eval_every=3, eval_batches=1)


class Killed(Exception):
    """Stands for a kill: training stops between two steps, after the checkpoints written so far."""


def _kill_at(step):
    def on_step(s, loss):
        if s == step:
            raise Killed

    return on_step


def _weights(path):
    return load_file(path / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(data_home, tmp_path_factory):
    dest = tmp_path_factory.mktemp("train") / "whole"
    return dest, train_helper(dest, CFG, threads=1, checkpoint_every=2)


def test_resume_after_a_kill_gives_the_uninterrupted_result(uninterrupted, tmp_path):
    whole, whole_manifest = uninterrupted
    dest = tmp_path / "killed"
    with pytest.raises(Killed):
        train_helper(dest, CFG, threads=1, checkpoint_every=2, on_step=_kill_at(5))
    assert not (dest / "config.json").exists()  # no finished helper yet, only checkpoints
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    manifest = train_helper(dest, CFG, threads=1, checkpoint_every=2, resume=True)
    a, b = _weights(whole), _weights(dest)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert manifest["final_valid_loss"] == pytest.approx(whole_manifest["final_valid_loss"], abs=1e-5)
    assert manifest["final_train_loss"] == pytest.approx(whole_manifest["final_train_loss"], abs=1e-5)
    curve_a = (whole / "training_curve.csv").read_text().splitlines()
    curve_b = (dest / "training_curve.csv").read_text().splitlines()
    assert len(curve_b) == len(curve_a) == CFG.steps + 1
    assert (dest / "checkpoints" / "step-000004").is_dir()  # the run's checkpoints move into the finished helper


def test_checkpointing_does_not_change_the_result(uninterrupted, tmp_path):
    whole, _ = uninterrupted
    plain = tmp_path / "plain"
    train_helper(plain, CFG, threads=1)
    assert not (plain / "checkpoints").exists()
    a, b = _weights(whole), _weights(plain)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


def test_a_checkpoint_is_a_loadable_helper(uninterrupted):
    from predictors.model import helper_logprobs, load_helper, resolve_helper_path

    whole, _ = uninterrupted
    ck = resolve_helper_path(whole / "checkpoints" / "step-000004")
    m = read_json(ck / MANIFEST)
    assert m["step"] == 4 and m["checkpoint"] is True and m["config"] == {**dataclasses.asdict(CFG), "corpora": ["wiki"]}
    assert m["valid_loss"] > 0 and m["context"] == CFG.context == helper_context(ck)
    helper = load_helper(ck)
    logp = helper_logprobs(helper, ["The quick brown fox"], batch_size=1, max_context=helper_context(ck))
    assert logp.shape == (1, 49152) and abs(float(torch.from_numpy(logp[0]).double().exp().sum()) - 1.0) < 1e-3


def test_refusals(uninterrupted, tmp_path):
    whole, _ = uninterrupted
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train_helper(whole, CFG, threads=1)
    with pytest.raises(ValueError, match="cannot resume"):
        train_helper(whole, dataclasses.replace(CFG, lr=1e-2), threads=1, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        train_helper(tmp_path / "fresh", CFG, threads=1, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        train_helper(tmp_path / "fresh", CFG, checkpoint_every=-1)
