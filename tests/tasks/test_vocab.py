"""How names resolve to tokens, on the real SmolLM2 vocabulary: ambiguity refused with every id, advice that works,
NFC fallback, strict vocabulary files."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest

from tasks.io import DuplicateKeyError
from tasks.vocab import LOOKUP_RULE, Vocabulary


@pytest.fixture(scope="module")
def vocab(data_home) -> Vocabulary:
    """The real target's vocabulary, as a suite stores it."""
    from tasks import load_tokenizer

    tok, _ = load_tokenizer()
    return Vocabulary.from_tokenizer(tok, len(tok))


def test_collisions_on_the_real_vocabulary_are_refused_with_every_id(vocab):
    assert len(vocab) == 49152
    texts: dict[str, list[int]] = {}
    for i, t in enumerate(vocab.text):
        texts.setdefault(t, []).append(i)
    raw_is_other_text = [i for i, r in enumerate(vocab.raw) if any(j != i for j in texts.get(r, []))]
    fffd = texts["\ufffd"]
    assert len(raw_is_other_text) == 54  # raw forms that are another token's decoded text
    assert len(fffd) == 265 and len(set(fffd) & set(raw_is_other_text)) == 48
    for i in raw_is_other_text:  # each such name is refused, naming both tokens
        (other,) = [j for j in texts[vocab.raw[i]] if j != i]
        assert vocab.lookup(vocab.raw[i]) is None
        assert vocab.ids_named(vocab.raw[i]) == tuple(sorted((i, other)))
    assert vocab.ids_named("¢") == (112, 26387)  # raw form of 112 (a byte piece), decoded text of 26387
    msg = vocab.explain_unknown("¢")
    assert msg.startswith("'¢' is ambiguous: it names 2 tokens (the decoded text of token 26387 and the raw form of "
                          "token 112)")
    assert msg.endswith(": 112; 26387 (raw 'Â¢')")  # 112's raw form is the ambiguous name itself: only its id
    assert vocab.lookup("Â¢") == 26387


def test_advice_for_u_fffd_names_only_forms_that_resolve_to_that_token(vocab):
    ids = vocab.ids_named("\ufffd")
    assert len(ids) == 265 and vocab.lookup("\ufffd") is None
    msg = vocab.explain_unknown("\ufffd")
    advice = msg.split("names it alone): ")[1].split("; ")
    assert [int(a.split()[0]) for a in advice] == list(ids)  # every id named
    offered = {int(a.split()[0]): re.fullmatch(r"\d+ \(raw '(.*)'\)", a) for a in advice}
    raw_offered = {i: m.group(1) for i, m in offered.items() if m}
    assert len(raw_offered) == 217  # 265 less the 48 whose raw form is another token's text
    for i, raw in raw_offered.items():
        assert raw == vocab.raw[i] and vocab.lookup(raw) == i  # following the advice reaches the token
    assert 112 not in raw_offered and "'¢'" not in msg
    for i in range(len(vocab)):  # every token can be named; every form offered names it alone
        forms = vocab.unique_forms(i)
        assert forms[-1] == i and all(vocab.lookup(f) == i for f in forms[:-1])
    assert sum(len(vocab.unique_forms(i)) == 1 for i in range(len(vocab))) == 48  # the id is their only name


def test_text_names_resolve_or_are_refused_never_wrong(vocab):
    wrong = [i for i, t in enumerate(vocab.text) if vocab.lookup(t) not in (i, None)]
    refused = [i for i, t in enumerate(vocab.text) if vocab.lookup(t) is None]
    assert wrong == [] and len(refused) == 366  # 312 share their text with other tokens, 54 are a raw form too
    assert sum(vocab.intended(t) is None for t in vocab.text) == 312  # a writer cannot tell which of those is meant
    assert all(vocab.intended(t) in (i, None) for i, t in enumerate(vocab.text))
    assert (vocab.lookup(vocab.text[10003]), vocab.lookup(vocab.text[28532])) == (10003, 28532)  # 'о�', 'י�'
    assert vocab.lookup(" Paris") == vocab.lookup("ĠParis") == 7042


def test_nfd_names_are_looked_up_in_nfc(vocab):
    nfc, nfd = " café", unicodedata.normalize("NFD", " café")
    assert nfd != nfc and nfd == " cafe\u0301"
    assert vocab.lookup(nfc) == vocab.lookup(nfd) == 37366 and vocab.text[37366] == nfc
    # 'é' in NFC is both the decoded text of 2756 and the raw form of byte piece 180: NFD 'é' is refused alike
    assert vocab.ids_named("e\u0301") == vocab.ids_named("é") == (180, 2756)
    assert "(in NFC form)" in vocab.explain_unknown("e\u0301")
    msg = vocab.explain_unknown(unicodedata.normalize("NFD", " cafés"))
    assert f"(' cafe\\u0301s') is not a token of the target's vocabulary ({LOOKUP_RULE})" in msg
    assert "nearest vocabulary entries" in msg
    assert all(unicodedata.is_normalized("NFC", t) for t in vocab.text + vocab.raw)  # the exact step decides for these


def test_exact_name_wins_over_its_nfc_form():
    v = Vocabulary(raw=["e\u0301", "é", "x"], text=["e\u0301", "é", "y"])
    assert (v.lookup("e\u0301"), v.lookup("é")) == (0, 1)
    assert v.lookup("x") == 2 and v.lookup("y") == 2


def test_vocabulary_file_is_strict(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocabulary.load(path) == vocab
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # saved by a Windows editor
    assert Vocabulary.load(path).text[37366] == " café"
    path.write_text('{"format": "logitpred-vocab/1", "raw": ["a"], "text": ["a"], "raw": ["b"]}')
    with pytest.raises(ValueError, match="duplicate key 'raw'") as e:
        Vocabulary.load(path)
    assert isinstance(e.value.__cause__, DuplicateKeyError)
    path.write_text(json.dumps({"format": "logitpred-vocab/1", "raw": ["a", 1], "text": ["a", "b"]}))
    with pytest.raises(ValueError, match="'raw' must be a list of strings"):
        Vocabulary.load(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a logitpred vocabulary file"):
        Vocabulary.load(path)
