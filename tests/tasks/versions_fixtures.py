"""The quantization series of the real SmolLM2 (float32, bfloat16, int8 dynamic) over the tiny suite, built once per
test process and shared by the version tests (tasks, predictors, CLI); and tiny random-weight model folders for bad
input."""

from __future__ import annotations

from pathlib import Path

SERIES = """version: 1
name: q
suites: [tiny]
gate: gate.yaml
baseline: unigram
versions:
  - {name: f32, preset: "smollm2:float32"}
  - {name: bf16, model: default, dtype: bfloat16}
  - {name: int8, preset: "smollm2:int8"}
"""
GATE = """name: vt
team: {members: [uniform, unigram]}
suites: [{name: tiny, split: sealed}]
thresholds: {kl_nats: {max: 6.0}}
holdout: {max_submissions: 100}
"""
_BUILT: dict[str, object] = {}


def series_folder() -> Path:
    from tasks.paths import data_dir

    return data_dir() / "series-test"


def quant_series(tiny_suite):
    """The built series spec (``tasks.versions.SeriesSpec``) under the session's data dir; needs ``tiny_suite``."""
    from evals.versions import build_series
    from tasks.versions import load_series

    folder = series_folder()
    if str(folder) not in _BUILT:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "series.yaml").write_text(SERIES)
        (folder / "gate.yaml").write_text(GATE)
        spec = load_series(folder / "series.yaml")
        build_series(spec)
        _BUILT[str(folder)] = spec
    return _BUILT[str(folder)]


def bad_series(folder: Path, model: str) -> Path:
    """A series file whose first version is ``model`` (path), before the float32 reference (first, so a bad rung
    fails before any other version's truth is computed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bad.yaml"
    path.write_text(f"version: 1\nname: bad\nsuites: [tiny]\nversions:\n  - {{name: rung2, model: '{model}'}}\n"
                    "  - {name: f32, preset: 'smollm2:float32'}\n")
    return path


def tiny_folder(folder: Path, tokenizer_dir: Path, *, vocab: int, extra_token: bool = False,
                nan: bool = False) -> Path:
    """A seeded tiny random-weight llama saved as an HF folder with the suite's tokenizer (or that tokenizer with one
    added token: another tokenizer), vocabulary ``vocab``, its weights NaN when ``nan`` (a rung that failed to
    train)."""
    import torch
    from transformers import AutoTokenizer

    from tests.tasks.tiny_models import tiny

    model = tiny("llama", vocab)
    if nan:
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if extra_token:
        tok.add_tokens(["<zz-not-in-the-series>"])
    tok.save_pretrained(folder)
    return folder
