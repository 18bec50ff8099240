"""Benchmark: truth storage, float16 log-probabilities (what ``tasks.truth`` stores) vs float32 (the former format),
side by side on the same suite split: bytes per vocabulary entry, load time (sha256 check + memory map + the float32
distribution consumers get), and the storage error KL(exact || stored) against the exact float32 truth.

    .venv/bin/python bench/storage.py [--suite wiki] [--split sealed] [--repeats 5]

Needs the suite's truth (``logitpred truth --suite wiki``). The exact float32 truth is recomputed here once (the
stored file holds only the float16 values), so the run takes about a truth computation of the split.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np


def best(fn, repeats: int) -> tuple[object, float]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="wiki")
    ap.add_argument("--split", default="sealed", choices=("practice", "sealed"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from safetensors.numpy import load_file, save

    from tasks import load_suite, load_target
    from tasks.compute import compute_truth
    from tasks.paths import sha256_file
    from tasks.quantize import storage_error
    from tasks.truth import load_split, load_stored

    suite = load_suite(args.suite)
    record = suite.truth_record()
    if record is None:
        raise SystemExit(f"no truth for suite {args.suite}: run `logitpred truth --suite {args.suite}`")
    ids = [p.id for p in suite.prompts(args.split)]
    path = suite.truth_dir / record["files"][args.split]["file"]
    (logp16, _), t16 = best(lambda: load_split(suite.truth_dir, record, args.split, ids, suite.name), args.repeats)
    target = load_target()
    exact = compute_truth(target.model, suite.prompts(args.split), bos_ids=suite.bos_ids)
    arrays = load_stored(suite.truth_dir, record, args.split, len(ids), suite.name)
    kl = storage_error(exact, arrays["logp_f16"], arrays["logz"])
    with tempfile.TemporaryDirectory() as tmp:  # the former format: float32 arrays, read by safetensors' loader
        old = Path(tmp) / "float32.safetensors"
        old.write_bytes(save({"logp": exact, "next_token_id": np.asarray(arrays["next_token_id"])}))
        sha = sha256_file(old)

        def load_old() -> np.ndarray:
            if sha256_file(old) != sha:
                raise SystemExit("hash changed")
            return load_file(old)["logp"]

        _, t32 = best(load_old, args.repeats)
        size32 = old.stat().st_size
    n, vocab = exact.shape
    entries = n * vocab
    size16 = path.stat().st_size
    print(f"suite {suite.name}/{args.split}: {n} prompts x {vocab} tokens = {entries:,} entries; "
          f"file sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}")
    print(f"float32 (former): {size32:,} bytes = {size32 / entries:.3f} bytes/entry; load {t32 * 1e3:.1f} ms")
    print(f"float16 (stored): {size16:,} bytes = {size16 / entries:.3f} bytes/entry; load {t16 * 1e3:.1f} ms "
          "(sha256 + memory map + float32 q - logz)")
    print(f"ratio: {size32 / size16:.2f}x fewer bytes, load {t32 / t16:.2f}x the former's speed")
    print(f"storage error KL(exact || stored): mean {kl.mean():.2e}, max {kl.max():.2e} nats (bound: mean <= 1e-4); "
          f"max |stored - exact| on tokens with p > 1e-3: "
          f"{np.abs(logp16 - exact)[np.exp(exact) > 1e-3].max():.2e}")


if __name__ == "__main__":
    main()
