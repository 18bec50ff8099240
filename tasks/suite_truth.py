"""The truth side of a suite: computing, caching, loading, committing and verifying its target's distributions.

``Suite`` (``tasks.suite``) inherits these methods; they use its ``name``, ``version``, ``target``, ``bos_ids``,
``path``, ``manifest`` and ``prompts(split)``. Storage and the commitment are ``tasks.truth``; computation is
``tasks.compute`` (in this process) or ``tasks.shards`` (resumable shards, locally or on a Ray cluster).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .paths import data_dir
from .truth import SPLITS, SuiteError, load_split, read_record


def _rebuild(suite: Any) -> str:
    from .suite import build_command

    return build_command(suite.manifest["config"])


class SuiteTruth:
    """Truth methods of ``Suite`` (a mixin: state lives in the suite's ``_truth`` and ``_record`` fields)."""

    @property
    def commitment(self) -> str | None:
        """The sealed commitment from the truth record; None while truth is missing or unreadable."""
        try:
            record = self.truth_record()
        except SuiteError:
            return None
        return record["commitment"] if record else None

    @property
    def truth_dir(self) -> Path:
        return data_dir() / "truth" / self.name / f"{self.version}-{self.target['id']}"

    def truth_record(self) -> dict[str, Any] | None:
        """The truth record (files, sha256, commitment) this object reads, read once; None if never computed.
        Raises ``SuiteError`` if it is unreadable or belongs to another version or target."""
        if self._record is None:
            self._record = read_record(self.truth_dir, name=self.name, version=self.version,
                                       target_id=self.target["id"])
        return self._record

    def has_truth(self) -> bool:
        """Whether a readable truth record names existing files for both splits (hashes are checked on load)."""
        try:
            record = self.truth_record()
        except SuiteError:
            return False
        return record is not None and all((self.truth_dir / record["files"][s]["file"]).is_file() for s in SPLITS)

    def truth_split(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(prompt ids, log-probs float32 ``(n, vocab)``, realized next-token ids int64 ``(n,)``) of a split.

        Verified on first load: file hash, shapes, no NaN or +inf. Raises ``SuiteError`` naming the fixing command.
        """
        if split not in SPLITS:
            raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if split not in self._truth:
            ids = [p.id for p in self.prompts(split)]
            record = self.truth_record()
            if record is None:
                raise SuiteError(f"no truth for suite {self.name!r} ({split}): run `logitpred truth --suite {self.name}`")
            self._truth[split] = (ids, *load_split(self.truth_dir, record, split, ids, self.name))
        return self._truth[split]

    def truth(self, prompt_id: str) -> np.ndarray:
        """Natural-log probabilities (float32, full vocabulary, logsumexp 0) of the target's next token."""
        for split in SPLITS:
            ids = [p.id for p in self.prompts(split)]
            if prompt_id in ids:
                return self.truth_split(split)[1][ids.index(prompt_id)]
        raise KeyError(f"prompt {prompt_id!r} is not in suite {self.name!r}")

    def compute_truth(self, target: Any, *, rebuild: bool = False, batch_size: int = 8,
                      on_progress: Callable[[str, int, int], None] | None = None, backend: str = "local",
                      workers: int | None = None) -> str:
        """Compute and cache truth for both splits with ``target`` (a ``tasks.Target``); returns the commitment.

        Computed in resumable shards (``tasks.shards``: a killed run recomputes only unfinished shards) in this
        process (``backend="local"``) or on ``workers`` Ray actors (``"ray"``: ``$RAY_ADDRESS``'s cluster, else a
        local one; docs/ray.md); the shards are deleted once the truth is stored. Both give the same numbers as
        ``tasks.compute.compute_truth``. Reuses valid cached truth unless ``rebuild``. The record is replaced in one
        atomic step (``tasks.truth``).
        Raises ``SuiteError`` for another target, cached truth of another dtype (without ``rebuild``: the dtype is
        part of the truth's identity), or cached truth that fails its checks (without ``rebuild``).
        """
        from .truth import TRUTH_FORMAT, record_format, write_truth

        self._check_target(target)
        old = record_format(self.truth_dir)
        if old is not None and old != TRUTH_FORMAT and old.startswith("logitpred-truth/"):
            rebuild = True  # truth of an older storage format (float32 arrays): recompute it in this one
        record = None if rebuild else self.truth_record()
        if record is not None:
            cached = record["placement"]["dtype"]
            if cached != target.placement["dtype"]:
                raise SuiteError(f"suite {self.name!r} has {cached} truth cached; the target now runs in "
                                 f"{target.placement['dtype']}: pass --rebuild to replace it (the commitment changes), "
                                 f"or load the target with --dtype {cached}")
            self.truth_split("practice")
            self.truth_split("sealed")  # verify the hashes
            return record["commitment"]
        work = self.truth_dir.parent / f".shards-{self.truth_dir.name}"
        if backend == "ray":
            from .ray_backend import RayPool

            device = "cuda" if target.placement["device"].startswith("cuda") else "cpu"
            with RayPool(target, workers=workers, device=device, dtype=target.placement["dtype"]) as pool:
                arrays = {s: self._exact(target, s, batch_size, on_progress, work=work, pool=pool, backend=backend)
                          for s in SPLITS}
        else:
            arrays = {s: self._exact(target, s, batch_size, on_progress, work=work, backend=backend, workers=workers)
                      for s in SPLITS}
        ids = {s: [p.id for p in self.prompts(s)] for s in SPLITS}
        base = {"suite": self.name, "version": self.version, "target": self.target, "placement": target.placement}
        # Recomputed on other hardware, the arrays differ in the last float bits and so does a new commitment; the
        # published one is reproduced by ``verify_recomputed`` (tolerance ``tasks.quantize.VERIFY_MAX_KL``), not by
        # rebuilding. Sealed submission counts are keyed by the sealed prompts, so they carry over a rebuild.
        self._record = write_truth(self.truth_dir, arrays, base, (self.path / "sealed.jsonl").read_bytes(), ids)
        self._truth.clear()
        shutil.rmtree(work, ignore_errors=True)  # the shards served their purpose once the truth is stored
        return self._record["commitment"]

    def _check_target(self, target: Any) -> None:
        if target.identity.id != self.target["id"]:
            raise SuiteError(
                f"suite {self.name!r} was built for target {self.target['name']} ({self.target['id']}), "
                f"not {target.identity.name} ({target.identity.id}): rebuild the suite with this target"
            )

    def _exact(self, target: Any, split: str, batch_size: int, on_progress: Callable[[str, int, int], None] | None,
               *, work: Path | None = None, **sharding: Any) -> tuple[np.ndarray, np.ndarray]:
        """(exact float32 log-probs ``(n, vocab)``, realized ids int64 ``(n,)``) of a split, from the target: in
        resumable shards under ``work`` (``sharding``: backend, workers, pool of ``compute_truth_sharded``), or in
        one go without ``work``."""
        from .compute import compute_truth
        from .shards import compute_truth_sharded

        prompts = self.prompts(split)
        progress = (lambda n, s=split, t=len(prompts): on_progress(s, n, t)) if on_progress else None
        if work is None:
            logp = compute_truth(target.model, prompts, bos_ids=self.bos_ids, batch_size=batch_size,
                                 on_progress=progress)
        else:
            logp, _ = compute_truth_sharded(target, prompts, bos_ids=self.bos_ids, batch_size=batch_size,
                                            work_dir=work / split, dtype=target.placement["dtype"],
                                            on_progress=progress, **sharding)
        return logp, np.array([p.next_token_id for p in prompts], dtype=np.int64)

    def verify_commitment(self) -> None:
        """Raise ``SuiteError`` unless the sealed prompts, the target identity, the dtype and the stored sealed truth
        on disk hash to the published commitment (``tasks.truth.commitment_of``)."""
        from .truth import commitment_of, committed_header, load_stored

        record = self.truth_record()
        if record is None:
            raise SuiteError(f"suite {self.name!r} has no truth yet, so no sealed commitment: "
                             f"run `logitpred truth --suite {self.name}`")
        if record.get("sealed_prompts_sha256") != self.sealed_prompts_sha256:
            raise SuiteError(f"suite {self.name!r}: the sealed prompts changed after truth was computed (edited?): "
                             f"rebuild with `{_rebuild(self)}`")
        prompts = self.prompts("sealed")
        arrays = load_stored(self.truth_dir, record, "sealed", len(prompts), self.name)
        header = committed_header(sealed_prompts_sha256=self.sealed_prompts_sha256, target=self.target,
                                  dtype=record["placement"]["dtype"], shape=arrays["logp_f16"].shape)
        realized = np.array([p.next_token_id for p in prompts], dtype=np.int64)
        if (header != record.get("committed") or not np.array_equal(arrays["next_token_id"], realized)
                or commitment_of(header, arrays["logp_f16"], arrays["next_token_id"]) != record["commitment"]):
            raise SuiteError(f"suite {self.name!r}: sealed prompts, target or truth do not match the published "
                             f"commitment: rebuild with `{_rebuild(self)}` and publish the "
                             "new one")
        from .trajectory import spec, verify_trajectories

        if spec(self) is not None:  # a trajectory suite: its continuations and their truth, committed apart
            verify_trajectories(self)

    def verify_recomputed(self, target: Any, *, batch_size: int = 8,
                          on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Recompute both splits' truth with ``target`` (here, on this hardware) and check it against the stored,
        committed truth: how a published commitment is reproduced on another machine.

        First ``verify_commitment`` (the stored truth is what was committed); then, per split, each row's
        ``KL(recomputed exact || stored)`` in nats must be at most ``tasks.quantize.VERIFY_MAX_KL`` (float16
        storage error plus another machine's float rounding; a real change of truth exceeds it). Returns
        ``{"ok", "tolerance", "placement", "splits": {split: {"kl_mean", "kl_max", "worst_prompt", "rows_over"}}}``.
        Raises ``SuiteError`` for another target (weights or tokenizer) or another dtype than the committed one: a
        different truth, which no tolerance admits.
        """
        from .quantize import VERIFY_MAX_KL, row_kl

        self._check_target(target)
        self.verify_commitment()
        record = self.truth_record()
        committed = record["committed"]["dtype"]
        if target.placement["dtype"] != committed:
            raise SuiteError(f"suite {self.name!r}: the commitment is for {committed} truth, the target runs in "
                             f"{target.placement['dtype']}: a different truth; load it with --dtype {committed}")
        report: dict[str, Any] = {"tolerance": VERIFY_MAX_KL, "placement": target.placement, "splits": {}}
        for split in SPLITS:
            exact, _ = self._exact(target, split, batch_size, on_progress)
            ids, stored, _ = self.truth_split(split)
            kl = row_kl(exact, stored)
            worst = int(np.argmax(kl)) if len(kl) else 0
            report["splits"][split] = {"kl_mean": float(kl.mean()) if len(kl) else 0.0,
                                       "kl_max": float(kl.max()) if len(kl) else 0.0,
                                       "worst_prompt": ids[worst] if ids else None,
                                       "rows_over": int((kl > VERIFY_MAX_KL).sum())}
        report["ok"] = all(r["rows_over"] == 0 for r in report["splits"].values())
        return report


