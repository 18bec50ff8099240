"""The reference set: exact P_D(B) for every declared distribution and behaviour, built once, cached, committed.

``build_reference(spec, target)`` (``logitpred rare build``), per distribution of the spec (``tasks.rare.spec``):

- product distributions: enumerate the support once for the next-token marginals of the whole vocabulary
  (``tasks.rare.exact.token_marginals``), pick ``reference.tokens`` single-token behaviours whose exact probability
  spreads log-uniformly over [low, high] (``pick_tokens``; rows at temperature 1 and 0), up to as many more whose
  exact greedy probability P_D(argmax = t) does (``reference_tokens_greedy``; rows at temperature 0 only), and
  compute every declared behaviour exactly (tokens from the marginals; texts by ``behaviour_probability``), at
  temperature 1 and 0;
- suite distributions: the exact mean over the split's prompts, single tokens from the suite's next-token truth, texts
  by the chain rule (``tasks.continuations.chain_rule_truth``).

Per distribution the record also keeps the inputs asked about one by one (``question_inputs``: ``INPUTS`` seeded
draws of a product distribution, every prompt of a suite) and, per temperature-1 row, ``p_inputs``: the exact
P(B | x) of each (the "P(B | x)?" questions of ``tasks.rare.questions``).

Cache: ``<data_dir>/rare/<spec sha16>-<target id>/``: ``marginals-<distribution>-<sha16>.npz`` (``p1``, ``p0``; reused
by a later build when its sha256 matches, so an interrupted build resumes) and ``reference.json``, written last and
atomically: the spec, target, per distribution its key, support size, forward passes (``passes``: marginals and
text behaviours; ``marginal_passes``) and seconds spent (``seconds``: the marginals', from the build that computed
them, and this build's total for the distribution; kept out of the commitment), and one row
per (distribution, behaviour, temperature) with ``p_exact``; ``commitment`` = sha256 over its canonical JSON without
times. A failed build leaves the previous record as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes, atomic_write_json, read_json
from ..paths import data_dir, sha256_file
from .behaviours import Behaviour, from_texts, from_token
from .distributions import ProductDistribution, SuiteDistribution, token_list
from .exact import Marginals, behaviour_probabilities, check_support, pick_tokens, token_marginals
from .scorer import BehaviourScorer, Passes, PrefixRunner
from .spec import RareSpec, SpecError

FORMAT = "logitpred-rare-reference/1"
INPUTS = 32  # inputs per product distribution asked about one by one ("P(B | x)?"), drawn with INPUT_SEED
INPUT_SEED = 0
Progress = Callable[[str, int, int], None]


def reference_dir(spec: RareSpec, target: Any) -> Path:
    return data_dir() / "rare" / f"{spec.sha256()[:16]}-{target.identity.id}"


HelperLoader = Callable[[str], tuple[Any, Any, dict[str, str]]]  # name -> (model, tokenizer, identity), approved


def make_distribution(decl: dict[str, Any], target: Any, corpus: str, helpers: HelperLoader | None = None) -> Any:
    """The concrete distribution of a declaration (``tasks.rare.spec``): a ``ProductDistribution``,
    ``SuiteDistribution`` or ``GeneratedDistribution``. ``helpers`` loads an approved helper by name (the caller checks
    approval). Raises ``SpecError`` for a suite not built for this target or a helper distribution without a loader,
    ``DistributionError`` for a token class with too few tokens."""
    from ..tokens import encode_text, train_tokens

    if decl["kind"] == "helper":
        from .generated import generate

        if helpers is None:
            raise SpecError(f"distribution {decl['id']!r} samples prompts from helper {decl['helper']!r}: give the "
                            "harness a helper loader (the CLI checks the helper's approval and loads it)")
        model, tokenizer, identity = helpers(decl["helper"])
        return generate(decl, model, tokenizer, identity, target.tokenizer)
    if decl["kind"] == "suite":
        from ..suite import load_suite
        from ..truth import SuiteError

        try:
            suite = load_suite(decl["suite"])
        except SuiteError as e:
            raise SpecError(f"distribution {decl['id']!r}: {e}") from e
        if suite.target["id"] != target.identity.id:
            raise SpecError(f"distribution {decl['id']!r}: suite {decl['suite']!r} was built for another target")
        return SuiteDistribution(decl["id"], decl["suite"], decl["split"],
                                 tuple(tuple(p.token_ids) for p in suite.prompts(decl["split"])))
    stream = train_tokens(corpus, target.tokenizer, target.identity.tokenizer_sha256)
    ids, p = token_list(decl["tokens"], stream.tokens, target.tokenizer, size=decl["size"])
    prefix = tuple(int(t) for t in encode_text(target.tokenizer, decl["prefix"]))
    return ProductDistribution(decl["id"], prefix, decl["prefix"], (ids,) * decl["positions"],
                               (p,) * decl["positions"])


def make_behaviour(decl: dict[str, Any], target: Any, dists: list[Any]) -> Behaviour:
    """The concrete behaviour of a declaration; texts are checked after every product distribution's prefix."""
    if "token" in decl:
        return from_token(decl["id"], decl["token"], target.vocab_size)
    out = None
    for d in dists:
        if isinstance(d, ProductDistribution):
            out = from_texts(decl["id"], decl["texts"], target.tokenizer, context=d.prefix_text)
    return out or from_texts(decl["id"], decl["texts"], target.tokenizer)


def _marginals(folder: Path, d: Any, target: Any, on_progress: Progress | None) -> tuple[Marginals, dict[str, Any]]:
    """Next-token marginals of one distribution, from the cache when its file matches, else computed and stored."""
    start = time.time()
    if not isinstance(d, ProductDistribution):  # a list of prompts: the exact mean over them
        logp, passes = _prompt_logprobs(d, target)
        p = np.exp(np.asarray(logp, dtype=np.float64))
        m = Marginals(p.mean(axis=0), np.bincount(logp.argmax(axis=1), minlength=p.shape[1]) / len(p),
                      Passes(passes))
        source = "suite truth" if isinstance(d, SuiteDistribution) else "helper samples, one pass each"
        return m, {"source": source, "support": len(d.prompts), "passes": passes,
                   "seconds": round(time.time() - start, 3)}
    check_support(d)
    key = d.sha256()[:16]
    for f in folder.glob(f"marginals-{d.id}-*.npz"):
        meta = folder / (f.stem + ".json")
        if meta.is_file():
            info = read_json(meta)
            if info.get("key") == key and info.get("sha256") == sha256_file(f):
                with np.load(f) as z:
                    return Marginals(z["p1"], z["p0"], Passes(info["passes"])), info
    m = token_marginals(target.model, d, bos_ids=target.bos_ids,
                        on_progress=(lambda n: on_progress(d.id, n, d.support_size)) if on_progress else None)
    buf = io.BytesIO()
    np.savez(buf, p1=m.p1, p0=m.p0)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"marginals-{d.id}-{sha[:16]}.npz"
    atomic_write_bytes(path, data)
    info = {"source": "enumeration", "key": key, "support": d.support_size, "passes": m.passes.forward,
            "seconds": round(time.time() - start, 3), "file": path.name, "sha256": sha}
    atomic_write_json(folder / (path.stem + ".json"), info)
    return m, info


def _prompt_logprobs(d: Any, target: Any) -> tuple[np.ndarray, int]:
    """Next-token log-probabilities ``(n, V)`` after each prompt of a suite (its truth) or generated distribution
    (one forward pass per prompt, batched), and the passes spent."""
    if isinstance(d, SuiteDistribution):
        from ..suite import load_suite

        return load_suite(d.suite).truth_split(d.split)[1], 0
    from ..forward import logprobs_at

    seqs = [list(target.bos_ids) + list(p) for p in d.prompts]
    rows = [logprobs_at(target.model, seqs[a:a + 16], [[len(s) - 1] for s in seqs[a:a + 16]])
            for a in range(0, len(seqs), 16)]
    return np.concatenate(rows), len(seqs)


def question_inputs(d: Any) -> list[list[int]]:
    """The inputs a distribution is asked about one by one: ``INPUTS`` draws of a product distribution (seeded by
    ``INPUT_SEED``), or every prompt of a suite distribution (target token ids, without BOS and without the product
    prefix)."""
    if isinstance(d, ProductDistribution):
        return d.sample(INPUTS, np.random.default_rng(INPUT_SEED)).tolist()
    return [list(p) for p in d.prompts]


def _token_inputs(d: Any, target: Any, tokens: list[int], inputs: list[list[int]]) -> dict[int, list[float]]:
    """{token: [P(token | x) for x in inputs]} (temperature 1), exact."""
    import torch

    if not isinstance(d, ProductDistribution):
        logp = _prompt_logprobs(d, target)[0]
        return {t: np.exp(np.asarray(logp[:, t], dtype=np.float64)).tolist() for t in tokens}
    runner = PrefixRunner(target.model, target.bos_ids + list(d.prefix))
    lp = torch.log_softmax(runner.logits(torch.tensor(inputs), keep=1)[:, -1].float(), dim=-1).double()
    return {t: lp[:, t].exp().tolist() for t in tokens}


def _greedy_tokens(p0: np.ndarray, ref: dict[str, Any], exclude: set[int]) -> list[int]:
    """Up to ``ref["tokens"]`` tokens whose exact P_D(argmax = t) spreads log-uniformly over [low, high]: the
    temperature-0 reference behaviours (a token picked by its temperature-1 probability is rarely anyone's argmax, so
    its temperature-0 probability is mostly exactly 0). Fewer when fewer tokens are the argmax of some input."""
    inside = sum(1 for t in np.flatnonzero((p0 >= ref["low"]) & (p0 <= ref["high"])).tolist() if t not in exclude)
    n = min(ref["tokens"], inside)
    return pick_tokens(p0, n, ref["low"], ref["high"], exclude=exclude) if n else []


def _texts_exact(b: Behaviour, d: Any, target: Any, inputs: list[list[int]],
                 on_progress: Callable[[int], None] | None = None) -> tuple[dict[int, float], list[float], int]:
    """({temperature: P_D(B)}, [P(B | x) for x in inputs], forward passes spent) of a multi-token behaviour,
    exactly (a pass: one input with all of B's members)."""
    if isinstance(d, ProductDistribution):
        sc = BehaviourScorer(target.model, bos_ids=target.bos_ids, prefix=d.prefix, members=b.members)
        each = np.exp(sc.log_prob(np.array(inputs, dtype=np.int64))).tolist()
        return behaviour_probabilities(sc, d, on_progress=on_progress), each, sc.passes.forward
    from ..continuations import chain_rule_truth

    items = [(p, m, True) for p in d.prompts for m in b.members]
    got = chain_rule_truth(target.model, items, bos_ids=target.bos_ids)
    J = len(b.members)
    p1 = [sum(np.exp(t.logprob) for t in got[i * J:(i + 1) * J]) for i in range(len(d.prompts))]
    p0 = [any(np.array_equal(t.full.argmax(axis=1), m) for t, m in zip(got[i * J:(i + 1) * J], b.members,
                                                                       strict=True)) for i in range(len(d.prompts))]
    return {1: float(np.mean(p1)), 0: float(np.mean(p0))}, [float(x) for x in p1], len(d.prompts)


def build_reference(spec: RareSpec, target: Any, *, on_progress: Progress | None = None,
                    helpers: HelperLoader | None = None) -> dict[str, Any]:
    """Build (or resume) the reference set of ``spec`` with ``target`` (module doc); returns the record. ``helpers``
    loads the approved helpers of ``helper`` distributions. Raises ``SpecError``/``DistributionError``/
    ``BehaviourError`` naming what is wrong before any long work."""
    dists = [make_distribution(d, target, spec.corpus, helpers) for d in spec.distributions]
    for d in dists:
        if isinstance(d, ProductDistribution):
            check_support(d)
    behaviours = [make_behaviour(b, target, dists) for b in spec.behaviours]
    folder = reference_dir(spec, target)
    folder.mkdir(parents=True, exist_ok=True)
    rows, info = [], {}
    ref = spec.reference
    for d in dists:
        start = time.time()
        m, info[d.id] = _marginals(folder, d, target, on_progress)
        info[d.id]["marginal_passes"] = info[d.id]["passes"]
        declared = {b.token for b in behaviours if b.token is not None}
        picked = pick_tokens(m.p1, ref["tokens"], ref["low"], ref["high"], exclude=declared)
        greedy = _greedy_tokens(m.p0, ref, exclude=declared | set(picked))
        inputs = question_inputs(d)
        info[d.id].update(reference_tokens=picked, reference_tokens_greedy=greedy, inputs=inputs)
        each = _token_inputs(d, target, picked + sorted(declared), inputs)
        for tok in picked + sorted(declared):
            for temp, p in ((1, m.p1), (0, m.p0)):
                rows.append({"distribution": d.id, "behaviour": f"token:{tok}", "token": tok, "temperature": temp,
                             "p_exact": float(p[tok]), "declared": tok in declared,
                             **({"p_inputs": each[tok]} if temp == 1 else {})})
        for tok in greedy:  # temperature 0 only: P_D(argmax = tok) spread over [low, high] (not asked as questions)
            rows.append({"distribution": d.id, "behaviour": f"token:{tok}", "token": tok, "temperature": 0,
                         "p_exact": float(m.p0[tok]), "declared": False, "greedy_pick": True})
        for b in behaviours:
            if b.token is None:
                tick = (lambda n, b=b, d=d: on_progress(f"{d.id}: {b.id}", n, d.support_size)) if on_progress else None
                exact, per_input, passes = _texts_exact(b, d, target, inputs, tick)
                info[d.id]["passes"] += passes
                for temp, p in exact.items():
                    rows.append({"distribution": d.id, "behaviour": b.id, "members": [list(x) for x in b.members],
                                 "temperature": temp, "p_exact": p, "declared": True,
                                 **({"p_inputs": per_input} if temp == 1 else {})})
        # seconds: the marginals' (when this build computed them; else the earlier build's) and this build's total
        info[d.id]["seconds"] = {"marginals": info[d.id]["seconds"], "this_build": round(time.time() - start, 3)}
    body = {"format": FORMAT, "spec_sha256": spec.sha256(), "spec": spec.canonical(), "target": target.identity.to_dict(),
            "distributions": {d.id: {**d.key(), **{k: v for k, v in info[d.id].items() if k != "seconds"}}
                              for d in dists}, "rows": rows}
    record = {**body, "commitment": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest(),
              "seconds": {d.id: info[d.id]["seconds"] for d in dists}}
    atomic_write_json(folder / "reference.json", record)
    return record


def load_reference(spec: RareSpec, target_id: str) -> dict[str, Any] | None:
    """The built reference record of ``spec`` for a target id, or None."""
    path = data_dir() / "rare" / f"{spec.sha256()[:16]}-{target_id}" / "reference.json"
    return read_json(path) if path.is_file() else None
