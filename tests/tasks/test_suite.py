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
    assert {r["source"] for s in rows for r in rows[s]} <= held and len(held) == 3
    windows = defaultdict(int)
    for r in rows["practice"] + rows["sealed"]:
        windows[r["source"]] += 1
    assert max(windows.values()) >= 4  # several prompts per document, none showing another's continuation
    assert sum(windows.values()) == 16


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


# --- context and BOS: prompts fit the target's context with their BOS; special-token strings are text ---------------
SPECIAL_TEXT = ("<bos>The mill stood by the river. <|endoftext|> Its wheel turned for two hundred years, grinding corn "
                "for the village.<|im_start|>user In <start_of_turn>1890 the <|im_end|> mill closed and the <eos> wheel "
                "was sold for scrap. <|endoftext|><|endoftext|> The building became a school, then a museum. ")


def _corpus_file(tmp_path, name, texts, *, held=6, train=4):
    """A .jsonl corpus of ``held`` held-out and ``train`` train documents (seed 0, held-out fraction 0.5)."""
    ids = [f"doc-{i}" for i in range(200)]
    held_ids = [i for i in ids if is_heldout(i, seed=0, heldout_fraction=0.5)][:held]
    chosen = held_ids + [i for i in ids if i not in held_ids][:train]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": texts[k % len(texts)]}) + "\n" for k, i in enumerate(chosen)))
    return path


def _long_texts(n=10, per=6):
    wiki = [d.text for d in read_corpus("wiki")[:400] if len(d.text) > 600]
    return ["\n\n".join(wiki[k * per : (k + 1) * per]) for k in range(n)]


@pytest.fixture(scope="module")
def gemma_tok(data_home):
    from predictors.model import gemma_path
    from tasks.target import load_tokenizer

    return load_tokenizer(gemma_path())[0]


def test_suite_of_a_small_context_target_cuts_inside_it(target, tmp_path, monkeypatch):
    """A GPT-2 target (learned positions) with a 64-position context: its identity carries the context, every prompt
    fits it, the manifest records it, and truth through the harness equals the model's plain forward."""
    import numpy as np
    import torch
    import transformers as tf

    from tasks import load_target, load_tokenizer
    from tasks.compute import direct_truth
    from tasks.quantize import STORED_ATOL, STORED_RTOL

    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(target.tokenizer), n_embd=64, n_layer=2, n_head=4,
                                             n_positions=64))
    folder = tmp_path / "gpt2-ctx64"
    model.save_pretrained(folder)
    target.tokenizer.save_pretrained(folder)
    tok, ident = load_tokenizer(folder)
    assert ident.context == 64 and "context" not in ident.to_dict()
    cfg = SuiteConfig("ctx64", str(_corpus_file(tmp_path, "long", _long_texts())), practice=3, sealed=3,
                      heldout_fraction=0.5, min_context=8)
    assert cfg.max_doc_tokens == 512  # clamped to the context at build, not in the config
    unclamped = prompt_rows(cfg, tok)
    assert max(len(r["token_ids"]) for s in unclamped for r in unclamped[s]) > 64  # what 513-token windows would cut
    suite = build_suite(cfg, tok, ident, len(tok))
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    assert len(prompts) == 6 and max(len(p.token_ids) for p in prompts) <= 64 and suite.manifest["context"] == 64
    small = load_target(folder)
    assert small.context == 64
    suite.compute_truth(small)
    for p in prompts:
        np.testing.assert_allclose(suite.truth(p.id), direct_truth(small.model, p.token_ids), rtol=STORED_RTOL,
                                   atol=STORED_ATOL)  # float16 storage (tasks.quantize)


def test_gemma_suite_leaves_room_for_its_one_bos(gemma_tok, tmp_path, monkeypatch):
    """Gemma 3's tokenizer adds <bos>: with a context of 40, prompts hold at most 39 tokens; none starts with the BOS
    id, even where the document's text starts with the string "<bos>"."""
    from predictors.model import gemma_path
    from tasks import load_tokenizer

    monkeypatch.setenv("LOGITPRED_HOME", str(tmp_path / "home"))
    _, ident = load_tokenizer(gemma_path())
    assert ident.context == 32768
    texts = ["<bos>" + t for t in _long_texts()]
    cfg = SuiteConfig("g40", str(_corpus_file(tmp_path, "bos", texts)), practice=3, sealed=3, heldout_fraction=0.5,
                      min_context=8)
    unclamped = prompt_rows(cfg, gemma_tok)
    assert max(len(r["token_ids"]) for s in unclamped for r in unclamped[s]) > 39
    suite = build_suite(cfg, gemma_tok, ident, len(gemma_tok), context=40)
    prompts = suite.prompts("practice") + suite.prompts("sealed")
    assert suite.bos_ids == [2] and suite.manifest["context"] == 40
    assert max(len(p.token_ids) for p in prompts) <= 39 and len(prompts) == 6
    rows = prompt_rows(cfg, gemma_tok, context=40, n_bos=1)  # what the build cut: the context minus the one BOS
    assert [tuple(r["token_ids"]) for s in ("practice", "sealed") for r in rows[s]] == [p.token_ids for p in prompts]
    assert all(p.token_ids[0] != 2 for p in prompts)
    assert any(p.text.startswith("<bos>") for p in prompts)  # the text's "<bos>" is text, not a second BOS


def test_prompts_beyond_the_context_are_named_with_their_sizes(target, tmp_path):
    from tasks.cuts import too_long

    cfg = SuiteConfig("long", str(_corpus_file(tmp_path, "long", _long_texts())), practice=3, sealed=3,
                      heldout_fraction=0.5, max_doc_tokens=96)
    rows = prompt_rows(cfg, target.tokenizer)
    longest = max((r for s in rows for r in rows[s]), key=lambda r: len(r["token_ids"]))
    n = len(longest["token_ids"])
    problems = too_long(rows, n, 1)  # the longest prompt and its BOS need one position more than this context
    assert f"prompt {longest['id']} has {n} tokens: with 1 BOS that is {n + 1} positions, more than the target's " \
           f"context of {n}" in problems
    assert too_long(rows, n + 1, 1) == [] and too_long(rows, n, 0) == [] and too_long(rows, None, 1) == []
    with pytest.raises(SuiteError, match=r"suite 'tight': the target's context of 12 positions, minus 0 BOS, leaves "
                                         r"prompts at most 12 tokens, not more than min_context \(16\)"):
        build_suite(dataclasses_replace(cfg, name="tight"), target.tokenizer, target.identity, target.vocab_size,
                    context=12)


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


@pytest.mark.parametrize("tok_name", ["smollm2", "gemma3"])
def test_special_token_strings_in_corpus_text_are_text(tok_name, target, gemma_tok, tmp_path):
    """A corpus whose text contains "<|endoftext|>", "<|im_start|>", "<bos>", ...: prompts hold no control token id,
    their text round-trips, and the plain ``add_special_tokens=False`` encoding would have held control tokens."""
    from tasks.cuts import control_tokens
    from tasks.tokens import encode_text, special_ids

    tok = target.tokenizer if tok_name == "smollm2" else gemma_tok
    special = special_ids(tok)
    texts = [SPECIAL_TEXT * 12 + t for t in _long_texts()]
    assert set(tok(SPECIAL_TEXT, add_special_tokens=False)["input_ids"]) & special  # what the old encoding did
    cfg = SuiteConfig("specials", str(_corpus_file(tmp_path, "specials", texts)), practice=3, sealed=3,
                      heldout_fraction=0.5, max_doc_tokens=96, min_context=8)
    rows = prompt_rows(cfg, tok)
    flat = [r for s in rows for r in rows[s]]
    assert len(flat) == 6 and control_tokens(rows, tok) == []
    for r in flat:
        assert not special & {*r["token_ids"], r["next_token_id"]}
        assert encode_text(tok, r["text"]) == r["token_ids"] and tok.decode(r["token_ids"]) == r["text"]
    shown = "".join(r["text"] for r in flat)
    assert "<|endoftext|>" in shown and "<bos>" in shown
    bad = dict(flat[0], token_ids=[*flat[0]["token_ids"][:-1], min(special)])
    assert control_tokens({"practice": [bad]}, tok) == [f"prompt {bad['id']} holds control token id(s) "
                                                        f"[{min(special)}]"]


def test_a_custom_corpus_gives_the_same_prompts_wherever_its_file_lies(target, tmp_path):
    """The order of sources is seeded by the corpus's content, not its path (a moved file is the same corpus)."""
    docs = [{"id": f"d{k}", "text": f"Document number {k} talks about the river, the hills and the town. " * 12}
            for k in range(40)]
    rows = []
    for folder in ("a", "b/c"):
        path = tmp_path / folder / "corpus.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        cfg = SuiteConfig("moved", str(path), practice=3, sealed=3, heldout_fraction=0.5)
        rows.append(prompt_rows(cfg, target.tokenizer))
    assert rows[0] == rows[1]
