"""Whole continuations: their true log-probabilities by the chain rule, and samples drawn from the target.

Chain rule. For a prompt ``x`` (model input ``bos + x``) and a continuation ``y = y_1 .. y_m``,
``log p(y | x) = sum_t log p(y_t | bos, x, y_<t)``. Every factor comes from one teacher-forced forward pass over
``bos + x + y_<m``: position ``len(bos) + len(x) - 1 + t`` predicts ``y_{t+1}``, so the output layer runs only at
those ``m`` positions (``logits_to_keep``) and log-softmax runs in float32 over the full vocabulary, exactly as
single-token truth does (``tasks.forward``). One pass replaces the ``m`` next-token passes a per-step loop would make;
``tests/tasks/test_continuations.py`` checks the two agree within 1e-4.

Prefix sharing. Continuations of one prompt share its prefix: one pass over ``bos + x`` fills the model's KV cache
(and gives the distribution of ``y_1``), the cache is copied and repeated for a batch of continuations, and one pass
over the right-padded ``y_<m`` of the batch gives every later factor (``_shared``). Whether a model's cache gives the
same numbers as a plain forward is probed once per model (``prefix_sharing``); a model that fails the probe, and any
prompt with a single continuation, go through ``tasks.forward.logprobs_at`` instead (whole sequences, batched
across prompts: batching is then the only sharing).

Sampling. ``sample_continuations`` draws ``k`` continuations at temperature ``T`` from the model's own logits with
the Gumbel-max trick: ``y = argmax_i (z_i / T + g_i)``, ``g_i = -log(-log u_i)``, ``u_i ~ U[0, 1)`` i.i.d., which is
an exact draw from ``softmax(z / T)`` (Gumbel 1954; Maddison, Tarlow & Minka 2014, "A* Sampling"). The uniforms come
from a CPU ``torch.Generator`` seeded by ``prompt_seed(seed, bos + x)``, one ``(k, vocab)`` block per step, so the
draws do not depend on the device or on how the logits were computed. With the KV cache (one prefix pass, then one
token per row per step) and without it (the whole sequence again every step: the benchmark's baseline) the samples
are identical unless rounding moves a logit across the gap between the two best perturbed scores (a chance per draw
about the size of that rounding, ~1e-5 in float32). No top-k, top-p or penalties; ``sampling_settings`` gives what
to record in a manifest.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .target import TargetError

SAMPLER = "logitpred.gumbel-max/1"  # the sampling rule and seed derivation below; recorded in manifests
_SHARING: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ContinuationTruth:
    """The target's log-probabilities (natural log) of one continuation ``y`` of ``m`` tokens after a prompt."""

    token_ids: tuple[int, ...]  # y, the continuation
    step_logprobs: np.ndarray  # float32 (m,): log p(y_t | bos, prompt, y_<t)
    logprob: float  # log p(y | prompt) = sum of step_logprobs, summed in float64
    full: np.ndarray | None = None  # float32 (m, vocab): log p(. | bos, prompt, y_<t) at every step, when asked


class Item(NamedTuple):
    """One (prompt, continuation) to score; ``full`` asks for the whole next-token distribution at every step."""

    prompt_ids: Sequence[int]
    continuation_ids: Sequence[int]
    full: bool = False


def _cache_kw(model: Any) -> str | None:
    """Name of the forward argument taking a KV cache: ``cache`` (transformers >= 5.x) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _prefix_pass(model: Any, prefix: Sequence[int], use_cache: bool) -> tuple[Any, Any]:
    """Logits (1, vocab) after ``prefix``, and the filled KV cache (None without ``use_cache``)."""
    import torch

    ids = torch.tensor([list(prefix)], device=getattr(model, "device", None))
    out = model(input_ids=ids, use_cache=use_cache, logits_to_keep=1)
    return out.logits[:, -1], (_out_cache(out) if use_cache else None)


def _shared(model: Any, prefix: Sequence[int], conts: Sequence[Sequence[int]], batch_size: int,
            pad_id: int) -> list[Any]:
    """Float32 log-probabilities ``(len(c), vocab)`` for each continuation ``c`` of one prefix: the prefix once,
    then batches of continuations over copies of its KV cache (right-padded; the mask hides the padding)."""
    import torch

    kw, device = _cache_kw(model), getattr(model, "device", None)
    logits, cache = _prefix_pass(model, prefix, use_cache=True)
    if cache is None:
        raise TargetError(f"{type(model).__name__} returned no KV cache with use_cache=True")
    first = torch.log_softmax(logits[0].float(), dim=-1).cpu()
    out: list[Any] = [first[None] for _ in conts]
    longer = sorted((i for i, c in enumerate(conts) if len(c) > 1), key=lambda i: len(conts[i]))
    for b in range(0, len(longer), batch_size):
        rows = longer[b : b + batch_size]
        width = max(len(conts[i]) - 1 for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), len(prefix) + width), dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for r, i in enumerate(rows):
            ids[r, : len(conts[i]) - 1] = torch.tensor(list(conts[i][:-1]))
            mask[r, len(prefix) : len(prefix) + len(conts[i]) - 1] = 1
        rep = copy.deepcopy(cache)
        rep.batch_repeat_interleave(len(rows))
        res = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True, logits_to_keep=width,
                    **{kw: rep})
        if res.logits.shape[:2] != (len(rows), width):
            raise TargetError(f"{type(model).__name__} gave logits of shape {tuple(res.logits.shape)} for "
                              f"{len(rows)} rows of {width} tokens after a cached prefix")
        lp = torch.log_softmax(res.logits.float(), dim=-1).cpu()
        for r, i in enumerate(rows):
            out[i] = torch.cat([first[None], lp[r, : len(conts[i]) - 1]])
    return out


def prefix_sharing(model: Any) -> bool:
    """Whether continuations of one prompt may share its prefix through the model's KV cache here: the forward takes a
    cache, and a cached prefix plus a padded batch of continuations reproduces ``tasks.forward.logprobs_at`` on the
    whole sequences (within 1e-3 in float32, 5e-2 in lower precision; the probe ``check_causal_lm`` uses). Probed once
    per model object (3 forwards of <= 7 tokens); any error in the probe means False."""
    import torch

    from .forward import check_causal_lm, logprobs_at, output_vocab

    if model in _SHARING:
        return _SHARING[model]
    check_causal_lm(model)
    ok = False
    if _cache_kw(model) is not None and "use_cache" in inspect.signature(model.forward).parameters:
        n = output_vocab(model)
        prefix = [(17 + 7919 * j) % n for j in range(4)]
        conts = [[(29 + 104729 * j) % n for j in range(3)], [(31 + 13 * j) % n for j in range(2)]]
        tol = 1e-3 if next(model.parameters()).dtype in (torch.float32, torch.float64) else 5e-2
        try:
            with torch.inference_mode():
                got = torch.cat(_shared(model, prefix, conts, batch_size=2, pad_id=0)).numpy()
            want = logprobs_at(model, [prefix + c[:-1] for c in conts],
                               [list(range(3, 3 + len(c))) for c in conts])
            ok = got.shape == want.shape and float(np.abs(got - want).max()) <= tol
        except (TypeError, ValueError, IndexError, RuntimeError, AttributeError):
            ok = False
    _SHARING[model] = ok
    return ok


def _validate(model: Any, items: Sequence[Item], bos: list[int]) -> None:
    from .forward import model_context, output_vocab

    limit, n_out = model_context(model.config), output_vocab(model)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    n_in = int(emb.weight.shape[0]) if emb is not None and getattr(emb, "weight", None) is not None else n_out
    for i, it in enumerate(items):
        prompt, cont = list(it.prompt_ids), list(it.continuation_ids)
        if not cont:
            raise ValueError(f"item {i}: the continuation is empty")
        if not bos and not prompt:
            raise ValueError(f"item {i}: no BOS and an empty prompt: nothing to predict the first token from")
        if bos and prompt[: len(bos)] == bos:
            raise ValueError(f"item {i}: the prompt already starts with the BOS ids {bos} (the model would see two)")
        bad = [t for t in prompt + cont if not 0 <= t < n_in] + [t for t in cont if not 0 <= t < n_out]
        if bad:
            raise ValueError(f"item {i}: token id {bad[0]} is outside the model's vocabulary of {min(n_in, n_out)}")
        need = len(bos) + len(prompt) + len(cont)
        if limit is not None and need > limit:
            raise TargetError(f"item {i} needs {need} positions ({len(bos)} BOS + {len(prompt)} prompt + "
                              f"{len(cont)} continuation tokens), more than {type(model).__name__}'s context of "
                              f"{limit}")


def chain_rule_truth(model: Any, items: Sequence[Item | tuple], *, bos_ids: Sequence[int] = (), batch_size: int = 16,
                     pad_id: int = 0, share_prefix: bool = True) -> list[ContinuationTruth]:
    """The target's log-probabilities of every ``(prompt_ids, continuation_ids[, full])`` in ``items``, in order, by
    the chain rule (module doc): one forward pass per continuation, batched (``batch_size`` rows per pass); the
    continuations of one prompt share its prefix through the KV cache when ``share_prefix`` and ``prefix_sharing``
    allow. The model sees ``bos_ids + prompt_ids + continuation_ids[:-1]``.

    Raises ``ValueError`` for an empty continuation, an empty input before the first continuation token, a prompt
    already starting with ``bos_ids``, or a token id outside the model's vocabulary; ``TargetError`` when the model is
    unsupported (``tasks.forward.check_causal_lm``) or BOS + prompt + continuation is longer than its context
    (``tasks.forward.model_context``; the sizes are named)."""
    import torch

    from .forward import check_causal_lm, logprobs_at, output_vocab

    check_causal_lm(model)
    its = [Item(*it) for it in items]
    bos = list(bos_ids)
    _validate(model, its, bos)
    share = share_prefix and prefix_sharing(model)
    blocks: list[Any] = [None] * len(its)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, it in enumerate(its):
        groups[tuple(it.prompt_ids)].append(i)
    alone = []
    with torch.inference_mode():
        for prompt, idx in groups.items():
            if share and len(idx) > 1:
                got = _shared(model, bos + list(prompt), [list(its[i].continuation_ids) for i in idx], batch_size,
                              pad_id)
                for i, lp in zip(idx, got, strict=True):
                    blocks[i] = lp.numpy()
            else:
                alone.extend(idx)
    alone.sort(key=lambda i: len(its[i].prompt_ids) + len(its[i].continuation_ids))
    for b in range(0, len(alone), batch_size):
        rows = alone[b : b + batch_size]
        seqs = [bos + list(its[i].prompt_ids) + list(its[i].continuation_ids[:-1]) for i in rows]
        starts = [len(bos) + len(its[i].prompt_ids) - 1 for i in rows]
        lens = [len(its[i].continuation_ids) for i in rows]
        lp = logprobs_at(model, seqs, [range(s, s + m) for s, m in zip(starts, lens, strict=True)], pad_id=pad_id)
        for i, part in zip(rows, np.split(lp, np.cumsum(lens)[:-1]), strict=True):
            blocks[i] = part
    vocab, out = output_vocab(model), []
    for it, lp in zip(its, blocks, strict=True):
        if lp.shape[1] != vocab:
            raise TargetError(f"{type(model).__name__} gave {lp.shape[1]} logits per position, but its output layer "
                              f"has {vocab} rows")
        cont = tuple(int(t) for t in it.continuation_ids)
        steps = lp[np.arange(len(cont)), list(cont)].astype(np.float32)
        out.append(ContinuationTruth(cont, steps, float(steps.astype(np.float64).sum()),
                                     np.array(lp, dtype=np.float32) if it.full else None))
    return out


def continuation_logprobs(model: Any, prompt_ids: Sequence[int], continuations: Sequence[Sequence[int]], *,
                          bos_ids: Sequence[int] = (), batch_size: int = 16, pad_id: int = 0,
                          full: bool | Sequence[bool] = False, share_prefix: bool = True) -> list[ContinuationTruth]:
    """``chain_rule_truth`` for the continuations of one prompt (``full``: one flag for all, or one per
    continuation). Raises what ``chain_rule_truth`` raises, and ``ValueError`` when ``full`` has the wrong length."""
    flags = [bool(full)] * len(continuations) if isinstance(full, bool) else [bool(f) for f in full]
    if len(flags) != len(continuations):
        raise ValueError(f"{len(flags)} full flags for {len(continuations)} continuations")
    items = [Item(prompt_ids, c, f) for c, f in zip(continuations, flags, strict=True)]
    return chain_rule_truth(model, items, bos_ids=bos_ids, batch_size=batch_size, pad_id=pad_id,
                            share_prefix=share_prefix)


def prompt_seed(seed: int, prompt_ids: Sequence[int], bos_ids: Sequence[int] = ()) -> int:
    """The generator seed for one prompt: the first 8 bytes of ``sha256(json.dumps([seed, bos_ids + prompt_ids]))``
    as a big-endian integer, shifted right by one bit (a non-negative 63-bit int)."""
    text = json.dumps([int(seed), [int(t) for t in [*bos_ids, *prompt_ids]]], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def sampling_settings(*, k: int, max_tokens: int, seed: int, temperature: float = 1.0,
                      eos_ids: Sequence[int] = ()) -> dict[str, Any]:
    """What determines ``sample_continuations``' samples, as a manifest records it (the sampler, the seed and how it
    is derived per prompt, the settings, and the versions of the libraries that computed the logits)."""
    import torch
    import transformers

    return {"sampler": SAMPLER, "method": "Gumbel-max: argmax(float32 logits / temperature + Gumbel noise), "
            "uniforms from a CPU torch.Generator, one (k, vocab) block per step",
            "seed": int(seed), "seed_per_prompt": "sha256(json [seed, bos_ids + prompt_ids])[:8] >> 1",
            "temperature": float(temperature), "k": int(k), "max_tokens": int(max_tokens),
            "eos_ids": [int(t) for t in eos_ids], "stop": "a sample ends after its first eos token (kept)",
            "top_k": None, "top_p": None, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def _draw(logits: Any, temperature: float, gen: Any) -> Any:
    """One Gumbel-max draw per row of ``logits`` (rows, vocab): token ids (rows,) on the CPU."""
    import torch

    z = (logits.float() / temperature).cpu().double()
    u = torch.rand(z.shape, generator=gen, dtype=torch.float64)
    return torch.argmax(z - torch.log(-torch.log(u)), dim=-1)


def sample_continuations(model: Any, prompt_ids: Sequence[int], *, k: int, max_tokens: int, seed: int,
                         bos_ids: Sequence[int] = (), temperature: float = 1.0, eos_ids: Sequence[int] = (),
                         use_cache: bool = True) -> list[list[int]]:
    """``k`` continuations of ``bos_ids + prompt_ids``, each of ``max_tokens`` tokens or ending at its first token in
    ``eos_ids`` (kept), sampled at ``temperature`` from the model's own logits (module doc: Gumbel-max, seeded by
    ``prompt_seed``). ``use_cache=False`` recomputes the whole sequence every step (the baseline) and gives the same
    samples. Raises ``ValueError`` for ``k`` or ``max_tokens`` below 1, a temperature that is not a positive finite
    number, or an empty input; ``TargetError`` when the model is unsupported, takes no KV cache (with ``use_cache``),
    or BOS + prompt + ``max_tokens`` exceeds its context."""
    import torch

    from .forward import check_causal_lm, model_context

    if k < 1 or max_tokens < 1:
        raise ValueError(f"k={k} and max_tokens={max_tokens} must both be at least 1")
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature {temperature} must be a positive finite number (no greedy decoding here)")
    prefix = [*bos_ids, *prompt_ids]
    if not prefix:
        raise ValueError("no BOS and an empty prompt: nothing to sample the first token from")
    check_causal_lm(model)
    limit = model_context(model.config)
    if limit is not None and len(prefix) + max_tokens > limit:
        raise TargetError(f"sampling needs {len(prefix) + max_tokens} positions ({len(bos_ids)} BOS + "
                          f"{len(prompt_ids)} prompt + {max_tokens} sampled tokens), more than "
                          f"{type(model).__name__}'s context of {limit}")
    kw = _cache_kw(model)
    if use_cache and kw is None:
        raise TargetError(f"{type(model).__name__}.forward takes no KV cache: sample with use_cache=False")
    gen = torch.Generator(device="cpu").manual_seed(prompt_seed(seed, prompt_ids, bos_ids))
    device, eos = getattr(model, "device", None), torch.tensor(list(eos_ids), dtype=torch.long)
    drawn = []
    with torch.inference_mode():
        logits, cache = _prefix_pass(model, prefix, use_cache)
        logits = logits.expand(k, -1)
        if use_cache:
            cache.batch_repeat_interleave(k)
        done = torch.zeros(k, dtype=torch.bool)
        for t in range(max_tokens):
            nxt = _draw(logits, temperature, gen)
            drawn.append(nxt)
            done |= torch.isin(nxt, eos)
            if t == max_tokens - 1 or bool(done.all()):
                break
            if use_cache:
                out = model(input_ids=nxt[:, None].to(device), use_cache=True, logits_to_keep=1, **{kw: cache})
            else:
                seqs = torch.cat([torch.tensor([prefix] * k), torch.stack(drawn, dim=1)], dim=1)
                out = model(input_ids=seqs.to(device), use_cache=False, logits_to_keep=1)
            logits = out.logits[:, -1]
    samples = torch.stack(drawn, dim=1).tolist()
    stop = {int(t) for t in eos_ids}
    return [row[: next((j + 1 for j, t in enumerate(row) if t in stop), len(row))] for row in samples]
