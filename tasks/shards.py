"""Truth computed in shards that are saved as they finish: resumable, in this process or on a Ray cluster.

``compute_truth_sharded`` runs exactly the forward passes of ``tasks.compute.compute_truth`` (the same
``plan_batches``: same groups, same length-sorted batches, same padded shapes), cut into *shards* of
``shard_batches`` consecutive batches. Each finished shard is written at once to ``work_dir`` as one safetensors
file (atomic rename, ``tasks.io``) named by its *key*: a sha256 over everything that decides its numbers (the
shard's model inputs, BOS included, and kept positions, the padding id, the target's identity and the dtype). A later
call with the same inputs finds the finished shards, checks them (key, shape, dtype and a sha256 of the data, stored
in the file's header) and computes only the missing or damaged ones: a run killed at any point, or a dead Ray worker,
loses at most the shards that were in progress.

Backends: ``"local"`` runs the shards one after another on ``target.model`` in this process (the same passes and the
same threads as ``compute_truth``, so bit-identical to it); ``"ray"`` hands them to Ray actors, one model per actor
(``tasks.ray_backend``), and the driver (this process) writes every shard, so ``work_dir`` need not be shared with
the workers. See docs/ray.md.

What the key leaves out: the device. The same weights on a CPU and a GPU differ only by float rounding, which truth
verification tolerates (``tasks.device``), so shards from either are reused by both; a work folder holding shards
from mixed hardware gives truth within that tolerance, not bit-identical to one machine's. Shards are not removed
here: the caller deletes ``work_dir`` once the truth built from them is published. Shards of other inputs left in
the folder are ignored.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compute import Batch, batch_logprobs, plan_batches
from .io import atomic_write_bytes
from .target import TargetError

if TYPE_CHECKING:
    from .ray_backend import RayPool

SHARD_FORMAT = "logitpred-truth-shard-1"
BACKENDS = ("local", "ray")
DEFAULT_SHARD_BATCHES = 4  # 32 prompts (6 MB for SmolLM2's 49,152-token vocabulary) per shard at batch size 8


@dataclass(frozen=True)
class Shard:
    """``batches`` (consecutive planned passes), the shard's position ``index`` in the plan, and its ``key`` (hex
    sha256, see the module doc); its rows are ``rows`` of the truth array, in the order the passes give them."""

    index: int
    batches: tuple[Batch, ...]
    key: str

    @property
    def rows(self) -> list[int]:
        return [i for b in self.batches for i in b.rows]

    @property
    def cost(self) -> int:
        """Padded tokens of its passes (what the Ray backend dispatches first: longest shards first)."""
        return sum(b.cost for b in self.batches)

    def path(self, work_dir: Path) -> Path:
        return Path(work_dir) / f"shard-{self.key[:32]}.safetensors"


def shard_key(batches: Sequence[Batch], *, target_id: str, dtype: str, pad_id: int, bos_ids: Sequence[int]) -> str:
    """Hex sha256 of what decides a shard's numbers: its passes (inputs and kept positions), ``pad_id``, ``bos_ids``,
    the target identity's ``id`` and ``dtype``, and the shard format."""
    spec = {"format": SHARD_FORMAT, "target": target_id, "dtype": dtype, "pad_id": int(pad_id),
            "bos": [int(t) for t in bos_ids], "batches": [[b.seqs, b.positions] for b in batches]}
    return hashlib.sha256(json.dumps(spec, separators=(",", ":")).encode()).hexdigest()


def plan_shards(batches: Sequence[Batch], *, shard_batches: int, target_id: str, dtype: str, pad_id: int,
                bos_ids: Sequence[int]) -> list[Shard]:
    """``batches`` cut into shards of ``shard_batches`` consecutive batches (the last may be shorter), keyed
    (``shard_key``). Raises ``ValueError`` for ``shard_batches < 1``."""
    if shard_batches < 1:
        raise ValueError(f"shard_batches {shard_batches} must be at least 1")
    runs = [tuple(batches[s : s + shard_batches]) for s in range(0, len(batches), shard_batches)]
    return [Shard(k, run, shard_key(run, target_id=target_id, dtype=dtype, pad_id=pad_id, bos_ids=bos_ids))
            for k, run in enumerate(runs)]


def write_shard(work_dir: Path, shard: Shard, logp: np.ndarray) -> Path:
    """Save a finished shard's log-probabilities (float32, ``(len(shard.rows), vocab)``) atomically, with its key
    and the sha256 of the data in the file's header; returns the file."""
    from safetensors.numpy import save

    logp = np.ascontiguousarray(logp, dtype=np.float32)
    meta = {"format": SHARD_FORMAT, "key": shard.key, "sha256": hashlib.sha256(logp.tobytes()).hexdigest()}
    path = shard.path(work_dir)
    atomic_write_bytes(path, save({"logp": logp}, metadata=meta))
    return path


def read_shard(work_dir: Path, shard: Shard, vocab: int) -> np.ndarray | None:
    """A finished shard's log-probabilities (float32, ``(len(shard.rows), vocab)``), or None when its file is
    missing or not whole and right: unreadable, another key, another shape or dtype, or data that does not match the
    sha256 in its header (a truncated or altered file). Never raises for a bad file: it is computed again."""
    from safetensors.numpy import load

    try:
        data = shard.path(work_dir).read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        logp = load(data)["logp"]
    except Exception:  # OSError, a bad header (struct.error, ValueError), safetensors' own SafetensorError, ...
        return None
    if (meta.get("format") != SHARD_FORMAT or meta.get("key") != shard.key or logp.dtype != np.float32
            or logp.shape != (len(shard.rows), vocab)
            or hashlib.sha256(np.ascontiguousarray(logp).tobytes()).hexdigest() != meta.get("sha256")):
        return None
    return logp


def compute_truth_sharded(
    target: Any,
    prompts: Sequence[Any],
    *,
    bos_ids: Sequence[int] = (),
    batch_size: int = 8,
    pad_id: int = 0,
    work_dir: Path,
    backend: str = "local",
    workers: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    shard_batches: int = DEFAULT_SHARD_BATCHES,
    max_restarts: int = 3,
    pool: RayPool | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """What ``compute_truth(target.model, prompts, ...)`` gives (float32 natural-log probabilities, shape
    ``(len(prompts), vocab)``, rows in prompt order), computed in resumable shards saved to ``work_dir``; and stats.

    ``target`` is a ``tasks.Target`` (``.model``, ``.identity``, ``.path``; with Ray, ``target.model`` only gives the
    config, output vocabulary and dtype, so the driver may hold it on the CPU). ``backend="local"`` computes the missing
    shards on ``target.model`` here (``device`` is then not used: the model runs where it was loaded); ``"ray"`` on
    ``workers`` Ray actors, each loading ``target.path`` with ``device`` and ``dtype`` (``tasks.ray_backend.RayPool``:
    connects to ``$RAY_ADDRESS``, else starts a local cluster for the call; give an open ``pool`` to reuse one
    cluster and its loaded models over several calls, e.g. both splits of a suite; ``workers``, ``device`` and
    ``max_restarts`` are then the pool's). A dead worker is replaced up to
    ``max_restarts`` times; past that, ``TargetError`` says how many shards are saved, and the same call again
    resumes. ``on_progress(n)`` gets the prompts of each shard as it is found done or finishes.

    Stats: ``backend``, ``workers``, ``shards`` (total), ``computed``, ``reused`` (valid files found), ``damaged``
    (files found but recomputed), ``restarts`` (workers replaced), and seconds: ``start_seconds`` (cluster start or
    connection; 0 with a given ``pool`` or nothing to compute), ``load_seconds`` (models loaded on the workers,
    likewise), ``compute_seconds`` (the missing shards, from the first handed out to the last saved), ``seconds``
    (all of the call: planning, reading finished shards and the cluster's shutdown included).

    Raises ``ValueError`` for an unknown ``backend``, ``workers < 1`` (or > 1 with the local backend, or more than the
    Ray cluster holds), ``batch_size`` or ``shard_batches < 1``, or prompts ``compute_truth`` refuses;
    ``TargetError`` for a ``dtype`` other than the target's, a model ``compute_truth`` refuses (raised in a worker:
    re-raised here as Ray's ``RayTaskError`` subclass of it), Ray not installed, a target without ``.path`` on Ray,
    a worker that loads another target than the driver's, or workers lost past ``max_restarts``.
    """
    from .device import placement
    from .forward import check_causal_lm, model_context, output_vocab

    t_start = time.perf_counter()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)} (option --backend)")
    if workers is not None and workers < 1:
        raise ValueError(f"workers {workers} must be at least 1 (option --workers)")
    if backend == "local" and workers not in (None, 1):
        raise ValueError(f"workers {workers}: the local backend runs one model in this process; "
                         "use --backend ray for several workers")
    loaded = placement(target.model)["dtype"]
    if loaded != dtype:
        raise TargetError(f"the target was loaded in {loaded}, but truth was asked in {dtype}: load it with "
                          f"--dtype {dtype} (the dtype is part of the truth's identity)")
    if backend == "ray":
        from .ray_backend import import_ray

        import_ray()  # not installed: say so before any work
    model = target.model
    if backend == "local":  # Ray workers check the copy they load; here only the config and output layer are read
        check_causal_lm(model)
    batches = plan_batches(prompts, bos_ids=bos_ids, batch_size=batch_size, limit=model_context(model.config),
                           model_name=type(model).__name__)
    shards = plan_shards(batches, shard_batches=shard_batches, target_id=target.identity.id, dtype=dtype,
                         pad_id=pad_id, bos_ids=bos_ids)
    vocab = output_vocab(model)
    out = np.empty((len(prompts), vocab), dtype=np.float32)
    stats: dict[str, Any] = {"backend": backend, "workers": 1 if backend == "local" else workers,
                             "shards": len(shards), "computed": 0, "reused": 0, "damaged": 0, "restarts": 0,
                             "start_seconds": 0.0, "load_seconds": 0.0}
    missing = []
    for shard in shards:
        logp = read_shard(work_dir, shard, vocab)
        if logp is None:
            stats["damaged"] += shard.path(work_dir).exists()
            missing.append(shard)
            continue
        out[shard.rows] = logp
        stats["reused"] += 1
        if on_progress:
            on_progress(len(shard.rows))

    def finish(shard: Shard, logp: np.ndarray) -> None:
        if logp.shape != (len(shard.rows), vocab) or logp.dtype != np.float32:
            raise TargetError(f"shard {shard.index} came back with shape {logp.shape} ({logp.dtype}), not "
                              f"({len(shard.rows)}, {vocab}) float32: do all workers load the same target?")
        write_shard(work_dir, shard, logp)
        out[shard.rows] = logp
        stats["computed"] += 1
        if on_progress:
            on_progress(len(shard.rows))

    t_compute = time.perf_counter()
    if backend == "local" or not missing:
        for shard in missing:
            finish(shard, np.concatenate([batch_logprobs(model, b, pad_id=pad_id) for b in shard.batches]))
        stats["compute_seconds"] = time.perf_counter() - t_compute
    else:
        from .ray_backend import RayPool

        own = pool is None
        if not own and (pool.target_id, pool.dtype) != (target.identity.id, dtype):
            raise ValueError(f"the Ray pool holds target {pool.target_id} in {pool.dtype}, not {target.identity.id} "
                             f"in {dtype}: open a pool for this target and dtype")
        if own:
            pool = RayPool(target, workers=workers, device=device, dtype=dtype, max_restarts=max_restarts)
            pool.start()
            stats.update(start_seconds=pool.start_seconds, load_seconds=pool.load_seconds)
        before, t_compute = pool.restarts, time.perf_counter()
        try:
            pool.run(missing, pad_id=pad_id, on_done=finish, work_dir=work_dir, total=len(shards))
        finally:
            stats.update(workers=pool.workers, restarts=pool.restarts - before,
                         compute_seconds=time.perf_counter() - t_compute)
            if own:
                pool.close()
    stats["seconds"] = time.perf_counter() - t_start
    return out, stats
