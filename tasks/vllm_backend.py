"""vLLM backend (optional, GPU only): sample continuations and score given ones through vLLM instead of transformers.

Installed with the ``[vllm]`` extra on a machine with a CUDA GPU; ``available()`` says whether it can run here and,
if not, why. The transformers path (``tasks.continuations``) stays the reference: this backend is a faster way to
the same numbers, and ``tests/tasks/test_vllm.py`` checks it against that path on the GPU machine.

API used (vLLM >= 0.8, V1 engine): ``LLM(model=<HF folder>, dtype=..., seed=...)``, ``LLM.generate`` with
``TokensPrompt(prompt_token_ids=...)`` (no tokenization, no BOS added: the ids are given whole), and
``SamplingParams``:

- log-probabilities of given continuations: ``prompt_logprobs=1`` on ``bos + prompt + continuation`` (one token
  generated and discarded). ``RequestOutput.prompt_logprobs[j]`` is a ``{token_id: Logprob}`` map for position ``j``
  (``None`` at ``j = 0``) that always holds the prompt's own token ``ids[j]`` besides the top-1, so the
  continuation's factor ``t`` is ``prompt_logprobs[len(bos + prompt) + t][y_t].logprob`` (vLLM computes these from
  the raw logits: ``log_softmax`` in float32, before any sampling processor). ``1`` rather than ``0``: early V1
  releases read ``0`` as "off".
- sampling: ``n=k``, ``temperature``, ``max_tokens``, ``seed`` (per request, from ``tasks.continuations
  .prompt_seed``), ``ignore_eos=True`` with ``stop_token_ids=eos_ids`` (the model's own EOS does not stop a sample
  unless listed, as in the transformers sampler), and no top-k, top-p, min-p or penalties (their defaults are off;
  ``generation_config="vllm"`` keeps the model folder's generation defaults out).

Agreement with the transformers path (float32 on the same GPU), per continuation token (``TOLERANCE``: the largest
``|Δ log p|`` over the tokens checked, and the mean), in nats:

- ``float32``: 0.05 largest, 0.005 mean. The same weights in the same precision would differ by kernel rounding alone
  (~1e-5), but vLLM's float32 kernels may run matrix products in TF32 (Triton's ``tl.dot`` default), whose 10-bit
  mantissa is float16's: the bound is that of float16 below. Off-by-one positions or a wrong BOS move log-probabilities
  by whole nats and still fail it.
- ``float16``: 0.15 largest, 0.012 mean; ``bfloat16``: 0.75 largest, 0.1 mean. About 3x the drift of transformers
  itself in that dtype against float32 on SmolLM2 (CPU, ``bench/trajectories.py --precision``, 768 tokens of 96
  sampled continuations: largest 0.049 and mean 0.0038 nats in float16, largest 0.25 and mean 0.031 in bfloat16):
  half precision moves log-probabilities by itself, and vLLM's fused kernels round differently again.

Sampling cannot be identical across backends: vLLM draws with its own generator (and its own sampling kernel), so
the same seed gives other sequences. Agreement is distributional (``tests/tasks/test_vllm.py``): (1) 2,000 first
tokens sampled by vLLM after one prompt pass a chi-square goodness-of-fit test (p > 1e-3) against the transformers
float32 distribution at that prompt; (2) every vLLM sample, scored by the transformers chain rule, has per-token
log-probabilities within ``TOLERANCE`` of what vLLM reported for its own draws; (3) the same seed twice gives the
same samples.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .continuations import Item, prompt_seed

# dtype -> (largest per-token |Δ log p|, mean per-token |Δ log p|), nats, against transformers float32 (module doc)
TOLERANCE = {"float32": (0.05, 0.005), "float16": (0.15, 0.012), "bfloat16": (0.75, 0.1)}
SAMPLER = "vllm"


def available() -> tuple[bool, str]:
    """``(True, "vllm <version>, <GPU name>")`` when vLLM is importable and torch sees a CUDA GPU; else ``(False,
    reason)`` saying what is missing and how to get it. Imports vLLM (seconds) only when it is installed."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vLLM is not installed: on a machine with a CUDA GPU, pip install -e '.[vllm]'"
    import torch

    if not torch.cuda.is_available():
        return False, (f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False); "
                       "vLLM runs only on a GPU")
    try:
        import vllm
    except Exception as e:  # a broken install (CUDA libraries, torch version) raises many types
        return False, f"vLLM is installed but does not import: {type(e).__name__}: {e}"
    return True, f"vllm {vllm.__version__}, {torch.cuda.get_device_name(0)}"


class VLLMBackend:
    """One vLLM engine on a Hugging Face model folder (``tasks.target._materialize`` gives the target's folder).

    ``dtype`` is the precision the weights run in (``float32``, ``float16``, ``bfloat16``; see ``TOLERANCE``);
    ``gpu_memory_utilization`` the share of GPU memory vLLM may take (weights plus KV cache); other keyword
    arguments go to ``vllm.LLM``. Raises ``RuntimeError`` with ``available()``'s reason when vLLM cannot run here."""

    def __init__(self, folder: str | Path, *, dtype: str = "float32", seed: int = 0,
                 gpu_memory_utilization: float = 0.3, **llm_kwargs: Any) -> None:
        ok, reason = available()
        if not ok:
            raise RuntimeError(f"the vLLM backend cannot run here: {reason}")
        from vllm import LLM

        self.folder, self.dtype = Path(folder), dtype
        self.llm = LLM(model=str(folder), dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                       generation_config="vllm", **llm_kwargs)

    def _generate(self, prompts: list[list[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    def continuation_logprobs(self, items: Sequence[Item | tuple], *, bos_ids: Sequence[int] = ()) -> list[np.ndarray]:
        """Per-step log-probabilities (float64, natural log, shape ``(m,)``) of each ``(prompt_ids,
        continuation_ids)`` in ``items``, as ``tasks.continuations.chain_rule_truth`` computes them (its ``full``
        flag is ignored: vLLM returns no full distributions here). Raises ``ValueError`` for an empty continuation or
        an empty input before it."""
        from vllm import SamplingParams

        its = [Item(*it) for it in items]
        seqs, starts = [], []
        for i, it in enumerate(its):
            start = len(bos_ids) + len(it.prompt_ids)
            if not it.continuation_ids or start == 0:
                raise ValueError(f"item {i}: an empty continuation, or nothing before it to predict it from")
            seqs.append([*bos_ids, *it.prompt_ids, *it.continuation_ids])
            starts.append(start)
        outs = self._generate(seqs, SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False))
        return [np.array([out.prompt_logprobs[s + t][y].logprob for t, y in enumerate(it.continuation_ids)],
                         dtype=np.float64) for out, s, it in zip(outs, starts, its, strict=True)]

    def sample(self, prompt_ids: Sequence[int], *, k: int, max_tokens: int, seed: int, bos_ids: Sequence[int] = (),
               temperature: float = 1.0, eos_ids: Sequence[int] = ()) -> tuple[list[list[int]], list[np.ndarray]]:
        """``k`` continuations sampled by vLLM (module doc), each of ``max_tokens`` tokens or ending at its first
        token in ``eos_ids`` (kept), and the log-probabilities (float64, ``(len,)``) vLLM reports for its own draws
        (from the raw logits, before temperature). Seeded by ``prompt_seed(seed, prompt_ids, bos_ids)``."""
        from vllm import SamplingParams

        params = SamplingParams(n=k, temperature=temperature, max_tokens=max_tokens, logprobs=1, detokenize=False,
                                seed=prompt_seed(seed, prompt_ids, bos_ids), ignore_eos=True,
                                stop_token_ids=[int(t) for t in eos_ids] or None)
        out = self._generate([[*bos_ids, *prompt_ids]], params)[0]
        stop = {int(t) for t in eos_ids}
        samples, logps = [], []
        for c in sorted(out.outputs, key=lambda c: c.index):
            ids = [int(t) for t in c.token_ids]
            if isinstance(c.stop_reason, int) and (not ids or ids[-1] != c.stop_reason):
                ids.append(int(c.stop_reason))  # a stop token left out of the output
            cut = next((j + 1 for j, t in enumerate(ids) if t in stop), len(ids))
            samples.append(ids[:cut])
            logps.append(np.array([c.logprobs[j][t].logprob for j, t in enumerate(ids[: min(cut, len(c.logprobs))])],
                                  dtype=np.float64))
        return samples, logps

    def settings(self, *, k: int, max_tokens: int, seed: int, temperature: float = 1.0,
                 eos_ids: Sequence[int] = ()) -> dict[str, Any]:
        """What determines ``sample``'s samples, as a manifest records it."""
        import torch
        import vllm

        return {"sampler": SAMPLER, "vllm": vllm.__version__, "torch": torch.__version__, "dtype": self.dtype,
                "seed": int(seed), "seed_per_prompt": "sha256(json [seed, bos_ids + prompt_ids])[:8] >> 1",
                "temperature": float(temperature), "k": int(k), "max_tokens": int(max_tokens),
                "eos_ids": [int(t) for t in eos_ids], "top_k": None, "top_p": None,
                "gpu": torch.cuda.get_device_name(0)}
