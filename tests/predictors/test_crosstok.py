"""Cross-tokenizer mapping: the table against the tokenizers themselves, the mass arithmetic against a direct loop,
and the approximation error where it can be checked exactly (own tokenizer; another tokenizer and back)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import entropy

from predictors.crosstok import MappingError, TokenMap, first_token_table, token_bytes


@pytest.fixture(scope="module")
def target_tok(tiny_suite):
    return tiny_suite.tokenizer()


@pytest.fixture(scope="module")
def small_tok(tiny_suite):
    """A SentencePiece-style BPE (``▁`` for space, byte fallback) trained on the suite's prompt texts: a real second
    tokenizer, different from the target's byte-level BPE, built in well under a second."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    texts = [p.text for s in ("practice", "sealed") for p in tiny_suite.prompts(s)]
    trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts * 3, trainer)
    # byte-fallback pieces are ordinary vocabulary entries "<0xNN>" (as in Gemma's), not special tokens
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok.model = models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


def _truth(tiny_suite) -> np.ndarray:
    return np.concatenate([tiny_suite.truth_split(s)[1] for s in ("practice", "sealed")]).astype(np.float64)


def test_own_tokenizer_maps_every_token_to_itself(tiny_suite, target_tok):
    V = tiny_suite.vocab_size
    tm = TokenMap.build(target_tok, target_tok, V, cache=False)
    specials = set(target_tok.all_special_ids) | {i for i, t in target_tok.added_tokens_decoder.items() if t.special}
    normal = np.array([i for i in range(V) if i not in specials])
    assert (tm.table[normal] == normal).all()
    # the target's own distributions through the mapping: only the mass on special tokens moves (to the rest)
    logp = _truth(tiny_suite)
    q = tm.map_logprobs(logp, rest="unigram", background=tiny_suite.background)
    kl = np.array([entropy(np.exp(lp), qq) for lp, qq in zip(logp, q, strict=True)])
    assert np.allclose(q.sum(axis=1), 1.0)
    p, spec = np.exp(logp), np.array(sorted(specials))
    # ordinary tokens keep their mass and only gain (up to float32 truth rows summing to 1 within ~2e-5)
    assert (q[:, normal] >= p[:, normal] * (1 - 1e-4)).all()
    # so all of the KL comes from the special tokens' mass: KL <= sum over specials of p log(p / q)
    special_term = (p[:, spec] * (logp[:, spec] - np.log(q[:, spec]))).sum(axis=1)
    assert (kl <= special_term + 1e-4).all(), (kl, special_term)
    little = p[:, spec].sum(axis=1) < 1e-4  # (a prompt ending a paragraph can put ~2% on <|endoftext|>)
    assert little.sum() >= len(kl) // 2 and kl[little].max() < 1e-3, kl


def test_table_agrees_with_encoding_the_decoded_token(small_tok, target_tok, tiny_suite):
    V = tiny_suite.vocab_size
    table = first_token_table(small_tok, target_tok, V, len(small_tok))
    checked = 0
    for h in range(len(small_tok)):
        if h in small_tok.all_special_ids:
            continue
        text = small_tok.decode([h])
        if "\ufffd" in text:  # a lone byte piece: checked by bytes below
            continue
        ids = target_tok.encode(text, add_special_tokens=False)
        if not ids:  # a control byte SmolLM2's vocabulary lacks (e.g. 0x04): it encodes to nothing, maps to nothing
            assert table[h] == -1
            continue
        assert table[h] == ids[0], (small_tok.convert_ids_to_tokens(h), text, ids)
        checked += 1
    assert checked > 300


def test_byte_fallback_leading_space_and_special_tokens(small_tok, target_tok, tiny_suite):
    V = tiny_suite.vocab_size
    table = first_token_table(small_tok, target_tok, V, len(small_tok))
    hb = token_bytes(small_tok, len(small_tok))
    c3 = small_tok.convert_tokens_to_ids("<0xC3>")
    assert hb[c3] == b"\xc3"
    assert target_tok.convert_ids_to_tokens(int(table[c3])) == "Ã"  # the byte-level BPE's token for byte 0xC3
    assert table[small_tok.convert_tokens_to_ids("<pad>")] == -1
    assert target_tok.convert_ids_to_tokens(int(table[small_tok.eos_token_id])) == "<|endoftext|>"
    spaced = [h for h in range(len(small_tok)) if small_tok.convert_ids_to_tokens(h).startswith("▁")
              and len(small_tok.convert_ids_to_tokens(h)) > 2]
    assert spaced
    for h in spaced[:50]:  # "▁the" stands for " the": its target token starts with a space too ("Ġ")
        assert target_tok.convert_ids_to_tokens(int(table[h])).startswith("Ġ")


def test_mass_arithmetic_matches_a_direct_loop(small_tok, target_tok, tiny_suite):
    V, H = tiny_suite.vocab_size, len(small_tok)
    tm = TokenMap(first_token_table(small_tok, target_tok, V, H), V)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(H, 0.05), size=3)
    bg = tiny_suite.background
    for coverage in (1.0, 0.9):
        got = tm.map_probs(p, coverage=coverage, rest="unigram", background=bg)
        for row, g in zip(p, got, strict=True):
            order = np.argsort(-row)
            kept, acc = set(), 0.0
            for h in order:  # the most likely tokens until the covered mass reaches `coverage`
                if coverage < 1.0 and acc >= coverage:  # coverage 1: every token (float sums may reach 1 early)
                    break
                kept.add(int(h))
                acc += row[h]
            want = np.zeros(V)
            for h in kept:
                if tm.table[h] >= 0:
                    want[tm.table[h]] += row[h]
            want *= min(1.0, (1 - 1e-6) / want.sum())  # at least MIN_REST is left for the rest
            left = 1.0 - want.sum()
            empty = want == 0
            want[empty] = left * bg[empty] / bg[empty].sum()
            assert np.allclose(g, want, rtol=1e-9, atol=1e-15)


def test_round_trip_through_another_tokenizer(small_tok, target_tok, tiny_suite):
    """Target -> small BPE -> target. Coarser tokens lose which long target token was meant, so the error is large
    and measured, not assumed: every row still sums to one and the KL is finite."""
    V, H = tiny_suite.vocab_size, len(small_tok)
    there = TokenMap(first_token_table(target_tok, small_tok, H, V), H)
    back = TokenMap(first_token_table(small_tok, target_tok, V, H), V)
    logp = _truth(tiny_suite)
    mid = there.map_logprobs(logp, rest="uniform")
    q = back.map_probs(mid, rest="unigram", background=tiny_suite.background)
    kl = np.array([entropy(np.exp(lp), qq) for lp, qq in zip(logp, q, strict=True)])
    assert np.allclose(q.sum(axis=1), 1.0) and np.isfinite(kl).all() and (kl > 0).all()
    # the round trip keeps the first characters: a target token's mass lands on a token that is its byte prefix
    tb = token_bytes(target_tok, V)
    top = logp.argmax(axis=1)
    for t in top:
        landed = back.table[there.table[t]]
        assert tb[t].startswith(tb[landed])


def test_unmappable_vocabulary_is_refused(target_tok, tiny_suite, data_home):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = ["<a>", "<b>", "<c>", "<d>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<a>"))
    helper = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<a>", additional_special_tokens=words[1:])
    with pytest.raises(MappingError, match="cannot be mapped"):
        TokenMap.build(helper, target_tok, tiny_suite.vocab_size)
    assert not list((data_home / "crosstok").glob("*")) if (data_home / "crosstok").exists() else True


def test_bad_settings(small_tok, target_tok, tiny_suite):
    tm = TokenMap(first_token_table(small_tok, target_tok, tiny_suite.vocab_size, len(small_tok)),
                  tiny_suite.vocab_size)
    p = np.full((1, len(small_tok)), 1 / len(small_tok))
    with pytest.raises(MappingError, match="coverage"):
        tm.map_probs(p, coverage=0.0)
    with pytest.raises(MappingError, match="rest rule"):
        tm.map_probs(p, rest="zipf")
    with pytest.raises(MappingError, match="background"):
        tm.map_probs(p, rest="unigram")
    with pytest.raises(MappingError, match="shape"):
        tm.map_probs(p[:, :-1], rest="uniform")


@pytest.mark.slow
def test_gemma_vocabulary_maps_and_round_trips(target_tok, tiny_suite):
    """The real Gemma 3 270M tokenizer (262,144 tokens, ``▁`` and byte fallback); converts the GGUF once if needed."""
    from predictors.model import gemma_path
    from tasks.target import load_tokenizer

    gemma, _ = load_tokenizer(gemma_path())
    V, H = tiny_suite.vocab_size, len(gemma)
    g2t = TokenMap.build(gemma, target_tok, V, H, cache=False)
    assert g2t.mapped_fraction > 0.97  # the rest: <unusedN> and other specials
    name = target_tok.convert_ids_to_tokens
    for piece, want in (("▁Paris", "ĠParis"), ("<0xC3>", "Ã"), ("<eos>", "<|endoftext|>"), ("▁▁", "ĠĠ")):
        assert name(int(g2t.table[gemma.convert_tokens_to_ids(piece)])) == want
    t2g = TokenMap.build(target_tok, gemma, H, V, cache=False)
    logp = _truth(tiny_suite)
    q = g2t.map_probs(t2g.map_logprobs(logp, rest="uniform"), rest="unigram", background=tiny_suite.background)
    kl = np.array([entropy(np.exp(lp), qq) for lp, qq in zip(logp, q, strict=True)])
    assert np.median(kl) < 0.01, kl  # most prompts: their likely tokens exist in both vocabularies
    # the approximation's known failure: where the target's likely token is one Gemma splits ("'s" -> "'" "s"), its
    # mass comes back on the shorter token ("'"): a distribution with 0.6 on "'s" loses most of it in the round trip
    s_tok = target_tok.convert_tokens_to_ids("'s")
    assert name(int(g2t.table[t2g.table[s_tok]])) == "'"
    row = np.log(0.4 * np.exp(logp[0]))
    row[s_tok] = np.logaddexp(row[s_tok], np.log(0.6))
    back = g2t.map_probs(t2g.map_logprobs(row[None], rest="uniform"), rest="unigram", background=tiny_suite.background)
    assert back[0, s_tok] < 0.05 and entropy(np.exp(row), back[0]) > 0.5
