"""Truth shards on a Ray cluster: one actor per worker, each holding its own copy of the target model.

``RayPool`` connects to the cluster named by ``$RAY_ADDRESS`` (``ray start --head`` on one machine, ``ray start
--address=...`` on the others), or, without it, starts a local cluster on this machine's CPUs (and GPUs) for as long
as the pool is open; a Ray connection already open in this process (``ray.init`` by the caller) is used as it is. It
never shuts down a cluster it did not start. Each actor loads ``target.path`` with ``tasks.target.load_target`` (the
same file or folder must exist at that path on every node, as must this project and its dependencies; the float32
copy of a GGUF target is made once per node in ``$LOGITPRED_MODEL_CACHE``) and checks that it got the same target
identity as the driver, and that it runs the same numeric code (``code_fingerprint``: the sources of the truth path,
torch and transformers versions): workers import the project when they start, so a node with another version, or a
checkout edited while a run goes on, would otherwise give other float rounding unnoticed.

Placement: with ``device="cuda"`` (or ``"auto"`` on a cluster with GPUs) each actor takes one GPU (``num_gpus=1``,
Ray sets its ``CUDA_VISIBLE_DEVICES``) and one CPU, and ``workers`` defaults to the cluster's GPUs; on CPUs each actor
takes ``cluster CPUs // workers`` CPUs and as many torch threads, and ``workers`` defaults to the number of nodes.

The driver hands out one shard at a time per actor, longest first, and saves each result as it arrives
(``tasks.shards``). A lost worker (its process killed, out of memory, its node gone) loses only the shard it was
computing: the actor is replaced and the shard handed out again, up to ``max_restarts`` times in all; past that, the
shards in flight are collected, and ``TargetError`` says how many are saved and that the same command resumes.
Errors raised inside a worker (a ``TargetError`` from its model) are raised here as they are, not retried.

Test hook: ``$LOGITPRED_KILL_AT=ray-worker-after-K`` (forwarded to the actors) makes each actor SIGKILL itself when
it is handed a shard after finishing K (``tasks.io.crash_point``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paths import model_cache_dir
from .target import TargetError

REPO = Path(__file__).resolve().parent.parent
NUMERIC_SOURCES = ("compute.py", "forward.py", "target.py", "device.py")  # the code that decides truth's numbers
RAY_INSTALL = "pip install -e '.[ray]'"
PLACEMENT_WARNING_S = 60.0  # warn when workers are not all placed and loaded after this long (resources missing?)
log = logging.getLogger(__name__)


def import_ray() -> Any:
    """The ``ray`` module; raises ``TargetError`` with the install command when it is not installed."""
    try:
        import ray
    except ImportError as e:
        raise TargetError(f"--backend ray needs Ray, which is not installed in this environment: {RAY_INSTALL} "
                          "(`make test` installs it), or use --backend local") from e
    return ray


def code_fingerprint() -> dict[str, str]:
    """What decides truth's float rounding besides the inputs: a sha256 (16 hex) of this project's numeric sources
    (``NUMERIC_SOURCES``, as on disk now) and the torch and transformers versions. Driver and workers must agree."""
    import torch
    import transformers

    h = hashlib.sha256()
    for name in NUMERIC_SOURCES:
        h.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
    return {"tasks": h.hexdigest()[:16], "torch": torch.__version__, "transformers": transformers.__version__}


class ShardWorker:
    """The body of one Ray actor: loads the target once, then computes shards (``tasks.compute.batch_logprobs``)."""

    def __init__(self, path: str, device: str, dtype: str, target_id: str, threads: int, code: dict[str, str]) -> None:
        self._path, self._device, self._dtype, self._target_id, self._threads = path, device, dtype, target_id, threads
        self._code = code
        self._target: Any = None
        self._seconds = 0.0
        self._done = 0

    def load(self) -> dict[str, Any]:
        """Load the target (once); returns where it runs: ``pid``, ``node``, ``placement``, ``threads``, ``seconds``.
        Raises ``TargetError`` when this worker runs other numeric code than the driver (``code_fingerprint``), or
        the target cannot be loaded or is not the driver's (another file at the path)."""
        import torch

        from .device import placement
        from .target import load_target

        if self._target is None:
            mine = code_fingerprint()
            if mine != self._code:
                diff = ", ".join(f"{k} {mine.get(k)} here, {v} on the driver" for k, v in self._code.items()
                                 if mine.get(k) != v)
                raise TargetError(f"the Ray worker on {socket.gethostname()} runs other code than the driver ({diff}): "
                                  "install the same version of this project, torch and transformers on every node "
                                  f"(and leave {', '.join(NUMERIC_SOURCES)} unedited during a run)")
            if self._device == "cpu":
                torch.set_num_threads(self._threads)
            t0 = time.perf_counter()
            target = load_target(self._path, device=self._device, dtype=self._dtype)
            if target.identity.id != self._target_id:
                raise TargetError(f"the Ray worker on {socket.gethostname()} loaded {self._path} as target "
                                  f"{target.identity.id}, not the driver's {self._target_id}: every node needs the "
                                  "same target file or folder at this path")
            self._target, self._seconds = target, time.perf_counter() - t0
        return {"pid": os.getpid(), "node": socket.gethostname(), "placement": placement(self._target.model),
                "threads": torch.get_num_threads(), "seconds": self._seconds}

    def compute(self, batches: Sequence[Any], pad_id: int) -> np.ndarray:
        """Float32 log-probabilities of one shard's passes, ``(rows of the shard, vocab)``, rows in pass order."""
        from .compute import batch_logprobs
        from .io import crash_point

        crash_point(f"ray-worker-after-{self._done}")
        self.load()
        logp = np.concatenate([batch_logprobs(self._target.model, b, pad_id=pad_id) for b in batches])
        self._done += 1
        return logp


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class RayPool:
    """``workers`` Ray actors holding the target, over one cluster connection; a context manager (``start`` on
    entry, ``close`` on exit). ``code`` is the driver's ``code_fingerprint``. Attributes after ``start``:
    ``workers``, ``device`` (resolved: ``cpu`` or ``cuda``),
    ``start_seconds``, ``load_seconds``, ``info`` (what each actor's ``load`` returned); ``restarts`` counts the
    actors replaced so far.

    Raises ``TargetError`` for a target without ``.path``, an unknown device or dtype, ``cuda`` on a cluster without
    GPUs, or Ray not installed; ``ValueError`` for ``workers < 1``, more workers than the cluster's GPUs (cuda) or
    CPUs (cpu), or ``max_restarts < 0``.
    """

    def __init__(self, target: Any, *, workers: int | None = None, device: str = "cpu", dtype: str = "float32",
                 max_restarts: int = 3) -> None:
        from .device import DEVICES, torch_dtype

        if getattr(target, "path", None) is None:
            raise TargetError("the target has no .path (it was not loaded by tasks.load_target): Ray workers load "
                              "the target again from its file or folder")
        if device not in DEVICES:
            raise TargetError(f"device {device!r} is not one of {', '.join(DEVICES)} (option --device)")
        torch_dtype(dtype)
        if workers is not None and workers < 1:
            raise ValueError(f"workers {workers} must be at least 1 (option --workers)")
        if max_restarts < 0:
            raise ValueError(f"max_restarts {max_restarts} must be at least 0")
        self.target_path, self.target_id = str(target.path), target.identity.id
        self.code = code_fingerprint()  # what every worker must match (checked when it loads)
        self.workers, self.device, self.dtype, self.max_restarts = workers, device, dtype, max_restarts
        self.restarts, self.start_seconds, self.load_seconds = 0, 0.0, 0.0
        self.info: list[dict[str, Any]] = []
        self._actors: list[Any] = []
        self._owns = False  # whether close() ends the Ray connection (and the local cluster it started)
        self._options: dict[str, Any] = {}
        self._threads = 1

    def __enter__(self) -> RayPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect (or start a local cluster), size the workers, start the actors and load a model in each. On any
        failure the actors are killed and a cluster started here is shut down before the error propagates."""
        ray = import_ray()
        t0 = time.perf_counter()
        try:
            if not ray.is_initialized():
                address = os.environ.get("RAY_ADDRESS")
                if address:
                    ray.init(address=address, logging_level=logging.WARNING)
                else:
                    ray.init(address="local", num_cpus=_cpu_count(), include_dashboard=False,
                             logging_level=logging.WARNING)
                self._owns = True
            self.start_seconds = time.perf_counter() - t0
            self._size(ray.cluster_resources(), sum(1 for n in ray.nodes() if n.get("Alive")))
            t0 = time.perf_counter()
            self._actors = [self._new_actor(ray) for _ in range(self.workers)]
            refs = [a.load.remote() for a in self._actors]
            ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_WARNING_S)
            if waiting:
                log.warning("%d of %d Ray workers not loaded after %.0f s (each needs %s): still waiting; a cluster "
                            "without such room waits forever", len(waiting), len(refs), PLACEMENT_WARNING_S,
                            self._needs())
            self.info = ray.get(refs)
            self.load_seconds = time.perf_counter() - t0
        except BaseException:
            self.close()
            raise

    def _size(self, resources: dict[str, float], nodes: int) -> None:
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if self.device == "auto":
            self.device = "cuda" if gpus else "cpu"
        if self.device == "cuda":
            if not gpus:
                raise TargetError("--device cuda: the Ray cluster has no GPU (ray.cluster_resources() names none): "
                                  "start the GPU nodes with `ray start`, or use --device cpu")
            self.workers = self.workers or gpus
            if self.workers > gpus:
                raise ValueError(f"workers {self.workers}: the Ray cluster has {gpus} GPUs, one per worker")
            threads, need = 1, {"num_cpus": 1, "num_gpus": 1}
        else:
            self.workers = self.workers or max(1, nodes)
            if self.workers > cpus:
                raise ValueError(f"workers {self.workers}: the Ray cluster has {cpus} CPUs, at least one per worker")
            threads = cpus // self.workers
            need = {"num_cpus": threads, "num_gpus": 0}
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               "LOGITPRED_MODEL_CACHE": str(model_cache_dir())}
        if os.environ.get("LOGITPRED_KILL_AT"):
            env["LOGITPRED_KILL_AT"] = os.environ["LOGITPRED_KILL_AT"]
        self._threads = threads
        self._options = {**need, "max_restarts": 0, "runtime_env": {"env_vars": env}}

    def _needs(self) -> str:
        return f"{self._options['num_cpus']} CPUs" + (" and 1 GPU" if self._options["num_gpus"] else "")

    def _new_actor(self, ray: Any) -> Any:
        return ray.remote(ShardWorker).options(**self._options).remote(
            self.target_path, self.device, self.dtype, self.target_id, self._threads, self.code)

    def run(self, shards: Sequence[Any], *, pad_id: int, on_done: Callable[[Any, np.ndarray], None],
            work_dir: Path, total: int) -> None:
        """Compute ``shards`` (``tasks.shards.Shard``) on the actors, longest first, calling ``on_done(shard, logp)``
        here as each arrives. ``work_dir`` and ``total`` (shards of the whole plan) only word the error raised when
        workers are lost past ``max_restarts`` (``TargetError``); errors raised in a worker propagate as they are."""
        ray = import_ray()
        from ray import exceptions as rx

        lost_errors = (rx.RayActorError, rx.ObjectLostError, rx.WorkerCrashedError, rx.NodeDiedError,
                       rx.OutOfMemoryError)
        queue = deque(sorted(shards, key=lambda s: -s.cost))
        inflight: dict[Any, tuple[int, Any]] = {}

        def submit(slot: int) -> None:
            if queue:
                shard = queue.popleft()
                inflight[self._actors[slot].compute.remote(shard.batches, pad_id)] = (slot, shard)

        for slot in range(len(self._actors)):
            submit(slot)
        lost: BaseException | None = None
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            slot, shard = inflight.pop(ref)
            try:
                logp = ray.get(ref)
            except lost_errors as e:
                queue.appendleft(shard)
                if lost is None and self.restarts < self.max_restarts:
                    self.restarts += 1
                    log.warning("Ray worker %d lost (%s); replaced (%d of at most %d replacements), shard %d "
                                "handed out again", slot, _first_line(e), self.restarts, self.max_restarts,
                                shard.index)
                    ray.kill(self._actors[slot])
                    self._actors[slot] = self._new_actor(ray)
                    submit(slot)
                else:
                    lost = lost or e  # hand out nothing more; collect what is in flight
                continue
            on_done(shard, logp)
            if lost is None:
                submit(slot)
        if lost is not None:
            raise TargetError(
                f"a Ray worker was lost ({type(lost).__name__}: {_first_line(lost)}) after {self.restarts} "
                f"replacements (max_restarts={self.max_restarts}); {total - len(queue)} of {total} shards are saved "
                f"in {work_dir}: run the same command again to resume (only the {len(queue)} missing shards are "
                "computed)") from lost

    def close(self) -> None:
        """Kill the actors; end the Ray connection if ``start`` opened it (which shuts down a local cluster it
        started, and only disconnects from one at ``$RAY_ADDRESS``)."""
        ray = import_ray()
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead, or the connection is gone
                pass
        self._actors = []
        if self._owns:
            ray.shutdown()
            self._owns = False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
