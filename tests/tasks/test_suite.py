"""Suites: deterministic, held out from training text, exact re-tokenization, commitment and tamper checks."""

import json

import pytest

from tasks import PRESETS, SuiteError, build_suite, load_suite, read_corpus, split_documents
from tasks.tokens import train_tokens


def test_public_api_shapes(tiny_suite):
    assert tiny_suite.vocab_size == 49152
    assert len(tiny_suite.prompts("practice")) == 6 and len(tiny_suite.prompts("sealed")) == 6
    p = tiny_suite.prompts("practice")[0]
    assert p.id.startswith("tiny-") and isinstance(p.next_token_id, int) and len(p.token_ids) >= 16
    assert tiny_suite.truth(p.id).shape == (49152,)
    assert load_suite("tiny").version == tiny_suite.version


def test_prompt_text_retokenizes_to_its_ids(tiny_suite, target):
    for split in ("practice", "sealed"):
        for p in tiny_suite.prompts(split):
            assert tuple(target.tokenizer(p.text, add_special_tokens=False)["input_ids"]) == p.token_ids


def test_build_is_deterministic(tiny_suite, target, tmp_path, monkeypatch):
    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path))
    again = build_suite(PRESETS["tiny"], target.tokenizer, target.identity, target.vocab_size)
    assert again.version == tiny_suite.version
    for split in ("practice", "sealed"):
        assert again.prompts(split) == tiny_suite.prompts(split)


def test_heldout_documents_never_in_train(tiny_suite, target):
    docs = read_corpus("wiki")
    train, held = split_documents(docs, seed=0, heldout_fraction=0.1)
    assert not {d.source for d in train} & {d.source for d in held}
    stream = train_tokens("wiki", target.tokenizer, target.identity.tokenizer_sha256)
    train_ids = set(stream.doc_ids)
    used = {p.doc for s in ("practice", "sealed") for p in tiny_suite.prompts(s)}
    assert used and not used & train_ids
    assert used <= {d.id for d in held}
    # practice and sealed never share a document
    assert not {p.doc for p in tiny_suite.prompts("practice")} & {p.doc for p in tiny_suite.prompts("sealed")}


def test_commitment_detects_tampering(tiny_suite, tmp_path):
    tiny_suite.verify_commitment()
    assert len(tiny_suite.commitment) == 64
    path = tiny_suite.truth_dir / "sealed.safetensors"
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-4] + b"\x00\x00\x80\x3f")
        fresh = load_suite(tiny_suite.path)
        with pytest.raises(SuiteError, match="does not match its recorded hash"):
            fresh.truth_split("sealed")
    finally:
        path.write_bytes(original)
    load_suite(tiny_suite.path).verify_commitment()


def test_missing_suite_and_split_errors(data_home):
    with pytest.raises(SuiteError, match="logitpred suite build nosuch"):
        load_suite("nosuch")
    with pytest.raises(SuiteError, match="unknown split"):
        load_suite("tiny").prompts("test")


def test_manifest_records_identity(tiny_suite):
    m = json.loads((tiny_suite.path / "manifest.json").read_text())
    assert m["target"]["weights_sha256"] and m["target"]["tokenizer_sha256"] and m["bos_ids"] == []
    assert m["config"]["seed"] == 0 and m["commitment"] == tiny_suite.commitment
