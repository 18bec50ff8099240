"""Suites: deterministic, held out from training text, exact re-tokenization, no prompt showing another's hidden
continuation (every preset and a custom corpus of long documents), commitment and tamper checks, config validation."""

import json
from collections import defaultdict

import pytest

from tasks import (
    PRESETS,
    SuiteConfig,
    SuiteError,
    build_suite,
    leaks,
    load_suite,
    prompt_rows,
    read_corpus,
    split_documents,
)
from tasks.corpora import is_heldout
from tasks.cuts import GUARD
from tasks.tokens import train_tokens


def test_public_api_shapes(tiny_suite):
    assert tiny_suite.vocab_size == 49152
    assert len(tiny_suite.prompts("practice")) == 6 and len(tiny_suite.prompts("sealed")) == 6
    p = tiny_suite.prompts("practice")[0]
    assert p.id.startswith("tiny-") and isinstance(p.next_token_id, int) and len(p.token_ids) >= 16
    assert p.cut - p.start == len(p.token_ids) and p.doc == f"{p.source}@{p.start}"
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
    used = {p.source for s in ("practice", "sealed") for p in tiny_suite.prompts(s)}
    assert len(used) == 12 and not used & set(stream.doc_ids)
    assert used <= {d.source for d in held}
    # practice and sealed never share a source document
    assert not {p.source for p in tiny_suite.prompts("practice")} & {p.source for p in tiny_suite.prompts("sealed")}


def check_rows(rows, docs, tokenizer):
    """Each row against its re-tokenized source: exact span and next token, text re-encodes; and no token from a cut to
    GUARD tokens after it is visible in any prompt of the suite (in source-document token coordinates)."""
    passages = {d.id: d for d in docs}
    visible = defaultdict(set)
    for split in rows:
        for r in rows[split]:
            ids = tokenizer(passages[r["passage"]].text, add_special_tokens=False)["input_ids"]
            a, c = r["start"] - r["offset"], r["cut"] - r["offset"]
            assert r["token_ids"] == ids[a:c] and r["next_token_id"] == ids[c]
            assert tokenizer(r["text"], add_special_tokens=False)["input_ids"] == r["token_ids"]
            assert passages[r["passage"]].source == r["source"]
            visible[r["source"]] |= set(range(r["start"], r["cut"]))
    cuts = [(r["source"], r["cut"]) for s in rows for r in rows[s]]
    assert len(set(cuts)) == len(cuts)
    for source, cut in cuts:
        assert not visible[source] & set(range(cut, cut + GUARD)), (source, cut)


@pytest.mark.parametrize("name", ["tiny", "wiki", "news", "sotu"])
def test_presets_reach_their_sizes_and_never_leak(name, target):
    cfg = PRESETS[name]
    docs = read_corpus(cfg.corpus)
    rows = prompt_rows(cfg, target.tokenizer, docs=docs)
    assert {s: len(r) for s, r in rows.items()} == {"practice": cfg.practice, "sealed": cfg.sealed}
    assert leaks(rows) == []
    check_rows(rows, docs, target.tokenizer)
    if name in ("news", "sotu"):  # too few held-out passages for one prompt each: several windows of some
        per_passage = defaultdict(int)
        for r in rows["practice"] + rows["sealed"]:
            per_passage[r["passage"]] += 1
        assert max(per_passage.values()) >= 2


def test_custom_corpus_of_long_documents_never_leaks(target, tmp_path):
    addresses = defaultdict(list)
    for d in read_corpus("sotu"):
        addresses[d.source].append(d.text)
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"id": f"address-{k}", "text": "\n\n".join(addresses[src])}) + "\n"
                            for k, src in enumerate(sorted(addresses)[:6])))
    cfg = SuiteConfig("long", str(path), practice=8, sealed=8, heldout_fraction=0.5, max_doc_tokens=128)
    docs = read_corpus(str(path))
    held = {d.source for d in split_documents(docs, seed=0, heldout_fraction=0.5)[1]}
    rows = prompt_rows(cfg, target.tokenizer, docs=docs)
    assert len(rows["practice"]) == 8 and len(rows["sealed"]) == 8 and leaks(rows) == []
    check_rows(rows, docs, target.tokenizer)
    assert {r["source"] for s in rows for r in rows[s]} == held and len(held) == 3
    windows = defaultdict(int)
    for r in rows["practice"] + rows["sealed"]:
        windows[r["source"]] += 1
    assert sorted(windows.values()) == [4, 4, 8]  # several prompts per document, none showing another's continuation


def test_leaks_flags_each_kind_of_exposure():
    def row(i, source, start, cut):
        return {"id": f"p{i}", "source": source, "start": start, "cut": cut, "token_ids": [0] * (cut - start)}

    assert leaks({"practice": [row(0, "a", 0, 20)], "sealed": [row(1, "a", 100, 130)]}) == [
        "source 'a' has prompts in practice and sealed"]
    covering = leaks([row(0, "a", 0, 20), row(1, "a", 0, 40)])  # the old scheme: one prefix of the other
    assert covering == ["prompt p1 shows tokens [0, 40) of 'a': within 32 tokens from prompt p0's cut at 20"]
    assert len(leaks([row(0, "a", 0, 20), row(1, "a", 21, 60)])) == 1  # starts right after the hidden token
    assert leaks([row(0, "a", 0, 20), row(1, "a", 20 + GUARD, 80)]) == []
    assert leaks([row(0, "a", 0, 20), row(1, "a", 5, 20)]) == ["prompts p0 and p1 share the cut 20 of 'a'"]
    bad = row(0, "b", 0, 20)
    bad["token_ids"] = [0] * 21
    assert leaks([bad]) == ["prompt p0 shows 21 tokens, not its span [0, 20) of 'b'"]


def test_too_few_prompts_names_the_cause(target, tmp_path):
    wiki = [d for d in read_corpus("wiki")[:400] if len(d.text) > 400]
    ids = [f"doc-{i}" for i in range(200)]
    held = [i for i in ids if is_heldout(i, seed=0, heldout_fraction=0.1)]
    chosen = held[:1] + [i for i in ids if i not in held][:29]  # 30 documents, exactly one held out
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": d.text}) + "\n" for i, d in zip(chosen, wiki, strict=False)))
    with pytest.raises(SuiteError) as e:
        prompt_rows(SuiteConfig("small", str(path), practice=5, sealed=5), target.tokenizer)
    msg = str(e.value)
    assert "only 1 of 30 documents was held out (heldout_fraction 0.1)" in msg
    assert "gave only" in msg and "of 5 sealed" in msg
    for option in ("--heldout-fraction", "--practice", "--sealed", "--min-context", "--seed"):
        assert option in msg
    assert "cuts_per_doc" not in msg


@pytest.mark.parametrize(("change", "message"), [
    ({"practice": 0}, "practice must be a whole number >= 1, got 0 (option --practice)"),
    ({"sealed": -3}, "sealed must be a whole number >= 1, got -3 (option --sealed)"),
    ({"heldout_fraction": 1.0}, "heldout_fraction must be between 0 and 1 (exclusive), got 1.0 (option --heldout-fraction)"),
    ({"heldout_fraction": 0}, "heldout_fraction must be between 0 and 1 (exclusive), got 0"),
    ({"min_context": 0}, "min_context must be a whole number >= 1, got 0 (option --min-context)"),
    ({"max_doc_tokens": 16}, "max_doc_tokens (16) must exceed min_context (16)"),
])
def test_config_sizes_are_validated(change, message):
    with pytest.raises(SuiteError) as e:
        SuiteConfig("x", "wiki", **change)
    assert message in str(e.value)


def test_commitment_detects_tampering(tiny_suite):
    tiny_suite.verify_commitment()
    assert len(tiny_suite.commitment) == 64
    path = tiny_suite.truth_dir / tiny_suite.truth_record()["files"]["sealed"]["file"]
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-4] + b"\x00\x00\x80\x3f")
        fresh = load_suite(tiny_suite.path)
        with pytest.raises(SuiteError, match="does not match its recorded hash.*logitpred truth --suite tiny --rebuild"):
            fresh.truth_split("sealed")
    finally:
        path.write_bytes(original)
    load_suite(tiny_suite.path).verify_commitment()


def test_missing_suite_split_and_old_format_errors(data_home, tmp_path):
    with pytest.raises(SuiteError, match="logitpred suite build nosuch"):
        load_suite("nosuch")
    with pytest.raises(SuiteError, match="unknown split"):
        load_suite("tiny").prompts("test")
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "logitpred-suite/1", "config": {
        "name": "mine", "corpus": "docs.jsonl", "practice": 50, "sealed": 50, "seed": 0}}))
    with pytest.raises(SuiteError, match=r"rebuild with `logitpred suite build mine --corpus docs.jsonl --practice 50 "
                                         r"--sealed 50 --rebuild`"):
        load_suite(old)


def test_manifest_records_identity_and_truth_record_the_commitment(tiny_suite):
    m = json.loads((tiny_suite.path / "manifest.json").read_text())
    assert m["target"]["weights_sha256"] and m["target"]["tokenizer_sha256"] and m["bos_ids"] == []
    assert m["config"]["seed"] == 0 and "commitment" not in m
    assert m["sealed_prompts_sha256"] == tiny_suite.sealed_prompts_sha256
    record = json.loads((tiny_suite.truth_dir / "truth.json").read_text())
    assert record["commitment"] == tiny_suite.commitment and record["version"] == tiny_suite.version
    assert sorted(p.name for p in tiny_suite.truth_dir.glob("*.safetensors")) == sorted(
        f["file"] for f in record["files"].values())
