"""Building, loading and verifying a trajectory suite's continuation sets and their chain-rule truth.

``build_trajectories`` runs with the target loaded (sampling needs it), after the suite's next-token truth exists (the
trajectory commitment extends its commitment). Per split, prompts are taken in chunks: each prompt's ``K`` samples are
drawn (``tasks.continuations.sample_continuations``), then the truth of every continuation of the chunk comes from
``tasks.continuations.chain_rule_truth`` (one teacher-forced pass per continuation, batched, the continuations of one
prompt sharing its prefix through the KV cache), with the full distribution at every step of the sampled ones. Full
rows are quantized at once (``tasks.quantize``) and streamed to a temporary file, so memory holds one chunk. Storage
and the commitment are ``tasks.trajectory.store``.

A valid cached set (same suite version, target, settings, dtype, and built on the current next-token truth) is
reused, its files hash-checked, unless ``rebuild``; a set built on next-token truth that has since been recomputed
is rebuilt.
"""

from __future__ import annotations

import fcntl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json, crash_point
from ..quantize import BYTES_PER_ENTRY, MAX_STORAGE_KL, STORED_DTYPE, dequantize, quantize, storage_error
from ..truth import SPLITS, SuiteError, check_finite
from .sets import Continuation, prompt_set, sampled_continuations, shown_continuations
from .spec import TrajectorySpec, require, sampled_id
from .store import (
    RECORD,
    TRAJ_FORMAT,
    commitment_of,
    committed_header,
    load_stored,
    read_record,
    shapes_of,
    trajectory_dir,
    write_arrays,
    write_continuations,
)

FULL_ROWS = 512  # full-distribution rows computed per chunk at most (float32: 100 MB at a vocabulary of 49152)


def _fix(name: str) -> str:
    return f"rebuild them with `logitpred truth --suite {name} --rebuild`"


def build_trajectories(suite: Any, target: Any, *, rebuild: bool = False, batch_size: int = 16,
                       on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Build (or reuse) the continuation sets of a trajectory suite and their truth with ``target`` (a
    ``tasks.Target``); return the record (``trajectory_commitment`` is the value to publish).

    ``batch_size``: rows per forward pass (``chain_rule_truth``) and prompts per chunk. ``on_progress(split, done,
    total)`` is called with prompts finished. Raises ``SuiteError`` for a next-token suite, another target, no
    next-token truth yet, a dtype other than the truth's (or the cached set's, without ``rebuild``), cached files that
    fail their hashes (without ``rebuild``), truth holding NaN or +inf, or float16 storage losing more than
    ``MAX_STORAGE_KL`` (mean); ``TargetError`` when prompt + continuation exceeds the model's context.
    """
    from ..continuations import sampling_settings

    sp = require(suite)
    if target.identity.id != suite.target["id"]:
        raise SuiteError(f"suite {suite.name!r} was built for target {suite.target['name']} ({suite.target['id']}), "
                         f"not {target.identity.name} ({target.identity.id})")
    truth = suite.truth_record()
    if truth is None:
        raise SuiteError(f"suite {suite.name!r} has no next-token truth yet: run `logitpred truth --suite "
                         f"{suite.name}` first (the trajectory commitment extends its commitment)")
    dtype = target.placement["dtype"]
    if truth["placement"]["dtype"] != dtype:
        raise SuiteError(f"suite {suite.name!r} has {truth['placement']['dtype']} truth; the target now runs in "
                         f"{dtype}: load it with --dtype {truth['placement']['dtype']}")
    folder = trajectory_dir(suite)
    if not rebuild:
        rec = read_record(folder, suite)
        if rec is not None and rec["placement"]["dtype"] != dtype:
            raise SuiteError(f"suite {suite.name!r} has {rec['placement']['dtype']} trajectories cached; the target "
                             f"now runs in {dtype}: pass --rebuild to replace them")
        if rec is not None and rec["truth_commitment"] == truth["commitment"]:
            for split in SPLITS:
                load_stored(folder, rec, split, suite.name)  # verify the hashes
            return rec
    tokenizer = suite.tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer: each deletes files the others' records do not name
        files, counts, storage = {}, {}, {}
        for split in SPLITS:
            files[split], counts[split], storage[split] = _build_split(
                suite, target, sp, split, folder, tokenizer, batch_size, on_progress)
            crash_point(f"trajectories:after-{split}")
        _, arrays = load_stored(folder, {"files": files}, "sealed", suite.name)
        header = _header(suite, truth["commitment"], dtype, sp, files["sealed"]["continuations"]["sha256"], arrays)
        beh = suite.manifest["trajectory"]["behaviours"]
        record = {"format": TRAJ_FORMAT, "suite": suite.name, "version": suite.version, "target": suite.target,
                  "placement": target.placement, "settings_hash": sp.settings_hash(),
                  "settings": sampling_settings(k=sp.k, max_tokens=sp.m, seed=sp.seed, eos_ids=sp.eos_ids),
                  "files": files, "counts": counts, "given": beh["given"] if beh else None,
                  "storage": {"dtype": np.dtype(STORED_DTYPE).name, "bytes_per_entry": BYTES_PER_ENTRY,
                              "kl_exact_vs_stored": storage},
                  "truth_commitment": truth["commitment"], "sealed_prompts_sha256": suite.sealed_prompts_sha256,
                  "committed": header, "trajectory_commitment": commitment_of(header, arrays)}
        crash_point("trajectories:before-record")
        atomic_write_json(folder / RECORD, record)  # the commit point
        crash_point("trajectories:after-record")
        keep = {RECORD, ".lock", *(e["file"] for f in files.values() for e in f.values())}
        for p in folder.iterdir():
            if p.name not in keep and p.is_file():
                p.unlink(missing_ok=True)  # superseded files, temporaries of killed writers
    return record


def _header(suite: Any, truth_commitment: str, dtype: str, sp: TrajectorySpec, continuations_sha256: str,
            arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return committed_header(truth_commitment=truth_commitment, sealed_prompts_sha256=suite.sealed_prompts_sha256,
                            target=suite.target, dtype=dtype, sampling=sp.sampling_key(),
                            behaviours_sha256=sp.behaviours_sha256, continuations_sha256=continuations_sha256,
                            shapes=shapes_of(arrays))


def _build_split(suite: Any, target: Any, sp: TrajectorySpec, split: str, folder: Path, tokenizer: Any,
                 batch_size: int, on_progress: Callable[[str, int, int], None] | None
                 ) -> tuple[dict[str, Any], dict[str, int], dict[str, float]]:
    """Sample, compute and write one split; returns (file entries, counts, storage error)."""
    from ..continuations import Item, chain_rule_truth

    prompts = suite.prompts(split)
    by_id = {p.id: p for p in prompts}
    shown = shown_continuations(suite, split, tokenizer=tokenizer)
    chunk = batch_size if not sp.k else max(1, min(batch_size, FULL_ROWS // (sp.k * sp.m)))
    conts: list[Continuation] = []
    steps, sums, logz, errs = [], [], [], []
    tmp = folder / f".{split}-full-{uuid.uuid4().hex[:12]}.tmp"
    fix = "the target model produced it (broken or corrupted weights?); nothing was written"
    try:
        with open(tmp, "wb") as fh:
            for a in range(0, len(prompts), chunk):
                part: list[Continuation] = []
                for p in prompts[a : a + chunk]:
                    samples = sampled_continuations(target.model, p, sp, bos_ids=suite.bos_ids, tokenizer=tokenizer)
                    part += prompt_set(shown[p.id], samples)
                items = [Item(by_id[c.prompt_id].token_ids, c.token_ids, c.kind == "sampled") for c in part]
                for c, t in zip(part, chain_rule_truth(target.model, items, bos_ids=suite.bos_ids,
                                                       batch_size=batch_size), strict=True):
                    if np.isnan(t.step_logprobs).any() or np.isposinf(t.step_logprobs).any():
                        raise SuiteError(f"trajectory truth of suite {suite.name!r} ({split}) continuation {c.id} "
                                         f"has step log-probabilities {t.step_logprobs.tolist()}: NaN or +inf; {fix}")
                    steps.append(t.step_logprobs)
                    sums.append(t.logprob)
                    if t.full is not None:
                        if t.full.shape[1] != suite.vocab_size:
                            raise SuiteError(f"the target gave {t.full.shape[1]} logits per step, the suite's "
                                             f"vocabulary is {suite.vocab_size}: {_fix(suite.name)}")
                        check_finite(t.full, split, [c.id] * len(t.full), suite.name, fix=fix)
                        q, z = quantize(t.full)
                        errs.append(storage_error(t.full, q, z))
                        fh.write(np.ascontiguousarray(q, dtype="<f2").tobytes())
                        logz.append(z)
                conts += part
                if on_progress:
                    on_progress(split, min(a + chunk, len(prompts)), len(prompts))
        err = np.concatenate(errs) if errs else np.zeros(0)
        if len(err) and err.mean() > MAX_STORAGE_KL:
            raise SuiteError(f"trajectory truth of suite {suite.name!r} ({split}) loses {err.mean():.3g} nats (mean "
                             f"KL) in float16 storage, more than the bound {MAX_STORAGE_KL:g}; nothing was written")
        lengths = [len(c.token_ids) for c in conts]
        full = [n if c.kind == "sampled" else 0 for c, n in zip(conts, lengths, strict=True)]
        small = {"token_ids": np.array([t for c in conts for t in c.token_ids], dtype=np.int64),
                 "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 "step_logprobs": (np.concatenate(steps) if steps else np.zeros(0)).astype(np.float32),
                 "logprob": np.array(sums, dtype=np.float64),
                 "full_offsets": np.concatenate([[0], np.cumsum(full)]).astype(np.int64),
                 "full_logz": (np.concatenate(logz) if logz else np.zeros(0)).astype(np.float32)}
        entries = {"continuations": write_continuations(folder, split, conts),
                   "truth": write_arrays(folder, f"{split}-truth", small, tmp, suite.vocab_size)}
    finally:
        tmp.unlink(missing_ok=True)
    kinds = {k: sum(c.kind == k for c in conts) for k in ("realized", "sampled", "given")}
    counts = {"prompts": len(prompts), **kinds, "steps": int(sum(lengths)), "full_rows": int(sum(full))}
    return entries, counts, {"kl_mean": float(err.mean()) if len(err) else 0.0,
                             "kl_max": float(err.max()) if len(err) else 0.0}


@dataclass
class SplitTrajectories:
    """One split's continuations and their truth (arrays memory-mapped, hash-checked on load; ``store`` doc)."""

    split: str
    continuations: list[Continuation]
    arrays: dict[str, np.ndarray] = field(repr=False)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.continuations)

    def index(self, continuation_id: str) -> int:
        """Position of a continuation by id. Raises ``KeyError`` naming it."""
        if not self._index:
            self._index.update((c.id, i) for i, c in enumerate(self.continuations))
        if continuation_id not in self._index:
            raise KeyError(f"continuation {continuation_id!r} is not in the {self.split} split")
        return self._index[continuation_id]

    @property
    def logprob(self) -> np.ndarray:
        """float64 ``(n,)``: log p(y | x) in nats of every continuation (the sum of its steps)."""
        return np.array(self.arrays["logprob"])

    @property
    def lengths(self) -> np.ndarray:
        """int64 ``(n,)``: tokens of every continuation."""
        return np.diff(self.arrays["offsets"])

    def steps(self, i: int) -> np.ndarray:
        """float32 ``(m_i,)``: log p(y_t | x, y_<t) of continuation ``i`` (nats, exact float32)."""
        off = self.arrays["offsets"]
        return np.array(self.arrays["step_logprobs"][off[i] : off[i + 1]])

    def full(self, i: int) -> np.ndarray | None:
        """float32 ``(m_i, vocab)``: the stored next-token distribution (natural log) at every step of continuation
        ``i`` (``full_f16 - full_logz``, ``tasks.quantize``), or None for a continuation that is not ``sampled``."""
        if self.continuations[i].kind != "sampled":
            return None
        a, b = (int(x) for x in self.arrays["full_offsets"][i : i + 2])
        return dequantize(self.arrays["full_f16"][a:b], self.arrays["full_logz"][a:b])


@dataclass
class Trajectories:
    """A trajectory suite's built continuation sets and truth: ``split(s)`` loads one split (cached)."""

    suite: Any
    folder: Path
    record: dict[str, Any]
    _splits: dict[str, SplitTrajectories] = field(default_factory=dict, repr=False)

    @property
    def commitment(self) -> str:
        return self.record["trajectory_commitment"]

    def split(self, split: str) -> SplitTrajectories:
        if split not in SPLITS:
            raise SuiteError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if split not in self._splits:
            conts, arrays = load_stored(self.folder, self.record, split, self.suite.name)
            self._splits[split] = SplitTrajectories(split, conts, arrays)
        return self._splits[split]

    def questions(self, split: str) -> Iterator[dict[str, Any]]:
        """What a predictor may see of ``split`` (``tasks.trajectory.questions.questions``)."""
        from .questions import questions

        return questions(self.suite, split)


def load_trajectories(suite: Any) -> Trajectories:
    """The built continuation sets of a trajectory suite. Raises ``SuiteError`` for a next-token suite, when they were
    never built, or were built on next-token truth that has since changed (naming the command that builds them)."""
    folder = trajectory_dir(suite)
    rec = read_record(folder, suite)
    if rec is None:
        raise SuiteError(f"suite {suite.name!r} has no trajectories yet: run `logitpred truth --suite {suite.name}`")
    if rec["truth_commitment"] != suite.commitment:
        raise SuiteError(f"suite {suite.name!r}: its trajectories were built on next-token truth that has since "
                         f"changed: {_fix(suite.name)}")
    return Trajectories(suite, folder, rec)


def verify_trajectories(suite: Any) -> None:
    """Raise ``SuiteError`` unless the stored sealed continuations and their truth hash to the published
    ``trajectory_commitment``, bound to the suite's current next-token commitment, sealed prompts, target, dtype,
    sampling settings and behaviour file, and unless the stored realized and given continuations are exactly those
    the suite determines (``shown_continuations``). It does not check the next-token commitment itself: call it from
    ``Suite.verify_commitment`` after that check, for suites with ``continuation > 0``."""
    sp = require(suite)
    trajectories = load_trajectories(suite)
    rec, name = trajectories.record, suite.name
    if rec.get("sealed_prompts_sha256") != suite.sealed_prompts_sha256:
        raise SuiteError(f"suite {name!r}: the sealed prompts changed after the trajectories were built: {_fix(name)}")
    sealed = trajectories.split("sealed")
    shown = shown_continuations(suite, "sealed")
    stored: dict[str, list[Continuation]] = {}
    for c in sealed.continuations:
        stored.setdefault(c.prompt_id, []).append(c)
    for pid, cs in shown.items():
        got = [c for c in stored.get(pid, []) if c.kind != "sampled"]
        samples = [c.id for c in stored.get(pid, []) if c.kind == "sampled"]
        if got != cs or samples != [sampled_id(pid, k) for k in range(sp.k)]:
            raise SuiteError(f"suite {name!r}: the stored sealed continuations of prompt {pid} are not the suite's: "
                             f"{_fix(name)}")
    if set(stored) != set(shown):
        raise SuiteError(f"suite {name!r}: the stored sealed continuations name other prompts: {_fix(name)}")
    header = _header(suite, rec["truth_commitment"], rec["placement"]["dtype"], sp,
                     rec["files"]["sealed"]["continuations"]["sha256"], sealed.arrays)
    if header != rec["committed"] or commitment_of(header, sealed.arrays) != rec["trajectory_commitment"]:
        raise SuiteError(f"suite {name!r}: sealed continuations, their truth, prompts or target do not match the "
                         f"published trajectory commitment: {_fix(name)} and publish the new one")
