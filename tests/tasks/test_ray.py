"""Sharded truth (``tasks.shards``) on a real local Ray cluster started here (2 CPUs, 2 workers) and in-process, with
the real default target (SmolLM2) on the tiny suite's 12 wiki prompts (batch size 2, one batch per shard: 6 shards).

Equality is exact (``np.array_equal``): the Ray workers run the same planned batches as ``compute_truth`` with one
torch thread each, and so does the driver here (``one_thread``). On other hardware, or with other numeric code (the
workers refuse that: ``code_fingerprint``), the documented tolerance is float rounding (docs/ray.md).
Workers are really killed (SIGKILL from inside, ``$LOGITPRED_KILL_AT=ray-worker-after-K``), and a local run is
really interrupted (its progress callback raises), shard files really damaged: no mocks.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.compute import compute_truth
from tasks.shards import compute_truth_sharded
from tasks.target import TargetError

pytestmark = pytest.mark.slow
BATCH = 2  # 12 prompts -> 6 batches -> 6 shards of one batch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The driver's model runs with 1 torch thread here, as each of the 2 Ray workers on 2 CPUs does, so bit-identity
    is asserted between runs with the same threads per model (on this CPU 2 threads gave the same bits too, but a
    BLAS may split a product differently by thread count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(tiny_suite):
    return tiny_suite.prompts("practice") + tiny_suite.prompts("sealed")


@pytest.fixture(scope="module")
def reference(target, prompts, tiny_suite):
    return compute_truth(target.model, prompts, bos_ids=tiny_suite.bos_ids, batch_size=BATCH)


@pytest.fixture(scope="module")
def ray_cluster(data_home):
    """A real local Ray cluster on 2 CPUs, for this module (started after the data dir is set)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def sharded(target, prompts, tiny_suite, work_dir: Path, **kw):
    return compute_truth_sharded(target, prompts, bos_ids=tiny_suite.bos_ids, batch_size=BATCH, shard_batches=1,
                                 work_dir=work_dir, **kw)


def test_ray_equals_local_and_reuses_every_shard(target, prompts, tiny_suite, reference, ray_cluster, tmp_path):
    from tasks.ray_backend import RayPool

    with RayPool(target, workers=2) as pool:  # a pool open over several calls (as for both splits of a suite)
        assert {i["threads"] for i in pool.info} == {1} and len({i["pid"] for i in pool.info}) == 2
        got, stats = sharded(target, prompts, tiny_suite, tmp_path, backend="ray", pool=pool)
        sealed = tiny_suite.prompts("sealed")
        alone, _ = sharded(target, sealed, tiny_suite, tmp_path / "sealed", backend="ray", pool=pool)
        other = dataclasses.replace(target, identity=dataclasses.replace(target.identity, weights_sha256="0" * 64))
        with pytest.raises(ValueError, match="open a pool for this target and dtype"):
            sharded(other, sealed, tiny_suite, tmp_path / "other", backend="ray", pool=pool)
    assert np.array_equal(alone, compute_truth(target.model, sealed, bos_ids=tiny_suite.bos_ids, batch_size=BATCH))
    assert (stats["shards"], stats["computed"], stats["reused"], stats["workers"]) == (6, 6, 0, 2)
    assert got.dtype == np.float32 and np.array_equal(got, reference)
    local, lstats = sharded(target, prompts, tiny_suite, tmp_path / "local")
    assert np.array_equal(local, got) and lstats["computed"] == 6
    seen = []
    again, stats = sharded(target, prompts, tiny_suite, tmp_path, backend="ray", on_progress=seen.append)
    assert (stats["computed"], stats["reused"], stats["start_seconds"], stats["load_seconds"]) == (0, 6, 0, 0)
    assert sum(seen) == len(prompts) and np.array_equal(again, reference)


def test_lost_workers_lose_only_their_shards(target, prompts, tiny_suite, reference, ray_cluster, tmp_path,
                                             monkeypatch):
    """Each worker SIGKILLs itself when handed a second shard. Without replacements the run stops with the two first
    shards saved; the rerun reuses them and replaces its killed workers: each of the 4 missing shards is computed by
    a worker of its own, so exactly 2 replacements."""
    monkeypatch.setenv("LOGITPRED_KILL_AT", "ray-worker-after-1")
    with pytest.raises(TargetError, match="2 of 6 shards are saved in .*: run the same command again to resume"):
        sharded(target, prompts, tiny_suite, tmp_path, backend="ray", workers=2, max_restarts=0)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 2
    got, stats = sharded(target, prompts, tiny_suite, tmp_path, backend="ray", workers=2, max_restarts=4)
    assert (stats["reused"], stats["computed"], stats["restarts"]) == (2, 4, 2)
    assert np.array_equal(got, reference)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 6


def test_local_resume_after_interruption_and_damaged_shards(target, prompts, tiny_suite, reference, tmp_path):
    class Interrupted(Exception):
        pass

    def stop_after_two(n, done=[]):  # noqa: B006 (the list counts calls)
        done.append(n)
        if len(done) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        sharded(target, prompts, tiny_suite, tmp_path, on_progress=stop_after_two)
    files = sorted(tmp_path.glob("shard-*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.glob(".*tmp"))
    got, stats = sharded(target, prompts, tiny_suite, tmp_path)
    assert (stats["reused"], stats["computed"], stats["damaged"]) == (2, 4, 0)
    assert np.array_equal(got, reference)

    files = sorted(tmp_path.glob("shard-*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:-1000])  # truncated
    data = bytearray(files[1].read_bytes())
    data[-5] ^= 0xFF  # one byte of the data flipped: same size, only the sha256 sees it
    files[1].write_bytes(bytes(data))
    got, stats = sharded(target, prompts, tiny_suite, tmp_path)
    assert (stats["reused"], stats["computed"], stats["damaged"]) == (4, 2, 2)
    assert np.array_equal(got, reference)


def test_other_inputs_are_other_shards(target, prompts, tiny_suite, tmp_path):
    _, first = sharded(target, prompts[:4], tiny_suite, tmp_path)
    _, wider = compute_truth_sharded(target, prompts[:4], bos_ids=tiny_suite.bos_ids, batch_size=4,
                                     shard_batches=1, work_dir=tmp_path)
    assert first["computed"] == 2 and (wider["reused"], wider["computed"]) == (0, 1)


def test_bad_inputs_are_refused_with_advice(target, prompts, tiny_suite, ray_cluster, tmp_path, monkeypatch):
    from tasks.ray_backend import RayPool

    with pytest.raises(ValueError, match="backend 'spark' is not one of local, ray"):
        sharded(target, prompts, tiny_suite, tmp_path, backend="spark")
    with pytest.raises(ValueError, match="workers 0 must be at least 1"):
        sharded(target, prompts, tiny_suite, tmp_path, backend="ray", workers=0)
    with pytest.raises(ValueError, match="use --backend ray for several workers"):
        sharded(target, prompts, tiny_suite, tmp_path, workers=2)
    with pytest.raises(ValueError, match="shard_batches 0"):
        compute_truth_sharded(target, prompts, shard_batches=0, work_dir=tmp_path, bos_ids=tiny_suite.bos_ids)
    with pytest.raises(TargetError, match="loaded in float32, but truth was asked in bfloat16"):
        sharded(target, prompts, tiny_suite, tmp_path, dtype="bfloat16")
    with pytest.raises(ValueError, match="workers 3: the Ray cluster has 2 CPUs"):
        sharded(target, prompts, tiny_suite, tmp_path, backend="ray", workers=3)
    with pytest.raises(TargetError, match="device 'tpu' is not one of"):
        RayPool(target, device="tpu")
    with pytest.raises(TargetError, match="has no .path"):
        RayPool(type("Loose", (), {"identity": target.identity})())
    from predictors.model import gemma_path

    other = dataclasses.replace(target, path=gemma_path())  # a worker would load another model than the driver's
    with pytest.raises(TargetError, match="not the driver's"):
        sharded(other, prompts, tiny_suite, tmp_path, backend="ray", workers=1)
    pool = RayPool(target, workers=1)
    pool.code = {**pool.code, "torch": "0.0"}  # what a worker sees when the driver runs another torch
    with pytest.raises(TargetError, match=r"runs other code than the driver \(torch .* here, 0.0 on the driver\)"):
        pool.start()
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the extra: `import ray` raises ImportError
    with pytest.raises(TargetError, match=re.escape("pip install -e '.[ray]'")):
        sharded(target, prompts, tiny_suite, tmp_path, backend="ray", workers=2)
    assert not list(tmp_path.glob("shard-*"))
