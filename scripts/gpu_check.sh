#!/usr/bin/env bash
# The GPU checks of trajectory truth and the vLLM backend, in one short run on a machine with a CUDA GPU (minutes).
# It cannot run on a machine without one: every step needs torch.cuda. Steps:
#   1. the [vllm] extra is installed if missing (needs PyPI or a local wheel folder; exits 2 with the reason if not);
#   2. transformers on the GPU: chain-rule truth (float32, cuda) equals the same truth on the CPU within 1e-4, and
#      sampling on the GPU gives identical samples with and without the KV cache;
#   3. tests/tasks/test_vllm.py with vLLM in float32, then in bfloat16 (one vLLM engine per process), against the
#      transformers float32 path on the same GPU, within tasks.vllm_backend.TOLERANCE;
#   4. the CPU truth and continuation tests, as a baseline on the same checkout.
# Usage: scripts/gpu_check.sh   (PYTHON=... to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export LOGITPRED_MODEL_CACHE=${LOGITPRED_MODEL_CACHE:-$PWD/.logitpred/models}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA GPU here: nothing to check" >&2
    exit 2
fi
if ! "$PY" -c "import vllm" 2>/dev/null; then
    echo "gpu_check: installing the [vllm] extra"
    "$PY" -m pip install -q -e '.[vllm]' || { echo "gpu_check: could not install vllm (no network or wheels?)" >&2; exit 2; }
fi

echo "== transformers on the GPU vs the CPU"
"$PY" - <<'EOF'
import numpy as np
from tasks import load_target
from tasks.continuations import Item, chain_rule_truth, sample_continuations
from tasks.tokens import encode_text
from tests.tasks.tiny_models import TEXT

cpu, gpu = load_target(), load_target(device="cuda")
ids = encode_text(cpu.tokenizer, TEXT)
items = [Item(ids[:20], ids[20:28], True), Item(ids[:20], ids[40:43], True), Item(ids[:11], ids[11:17], True)]
a, b = chain_rule_truth(cpu.model, items), chain_rule_truth(gpu.model, items)
diff = max(float(np.abs(x.full - y.full).max()) for x, y in zip(a, b))
print(f"chain-rule truth, cuda vs cpu: max |diff| {diff:.2e}")
assert diff <= 1e-4, diff
kw = dict(k=8, max_tokens=16, seed=0, bos_ids=gpu.bos_ids)
same = sample_continuations(gpu.model, ids[:24], **kw) == sample_continuations(gpu.model, ids[:24], **kw, use_cache=False)
print(f"sampling on cuda, with vs without KV cache: identical {same}")
assert same
EOF

for dtype in float32 bfloat16; do
    echo "== vLLM ($dtype) vs transformers"
    LOGITPRED_VLLM_DTYPE=$dtype "$PY" -m pytest -q -rs -s tests/tasks/test_vllm.py
done

echo "== CPU truth and continuation tests"
"$PY" -m pytest -q tests/tasks/test_continuations.py tests/tasks/test_truth.py
