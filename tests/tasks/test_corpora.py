"""Corpus readers and the seeded split."""

import json

import pytest

from tasks.corpora import CorpusError, _clean_news, read_corpus, split_documents


def test_builtin_corpora_read(data_home):
    wiki = read_corpus("wiki")
    assert len(wiki) == 10033 and all(d.text for d in wiki[:50])
    sotu = read_corpus("sotu")
    assert len({d.source for d in sotu}) > 200 and max(len(d.text) for d in sotu) <= 40000


def test_news_damage_is_repaired_and_flagged():
    text, damaged = _clean_news('DeVos"?highly and \ufffd here')
    assert damaged and '"?' not in text and "\ufffd" not in text
    assert _clean_news("clean text") == ("clean text", False)


def test_user_corpora_jsonl_and_txt(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text(json.dumps({"id": "a", "text": "Hello there."}) + "\n" + json.dumps({"id": "b", "text": "Bye."}) + "\n")
    assert [d.id for d in read_corpus(str(j))] == ["a", "b"]
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "one.txt").write_text("First document.")
    (folder / "two.txt").write_text("   ")
    assert [d.id for d in read_corpus(str(folder))] == ["one.txt"]


def test_bad_corpora_are_explained(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"id": "a", "text": "  "}) + "\n")
    with pytest.raises(CorpusError, match="has no text"):
        read_corpus(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(CorpusError, match="bad.jsonl:1: expected a JSON object with 'id' and 'text'"):
        read_corpus(str(bad))
    with pytest.raises(CorpusError, match="unknown corpus"):
        read_corpus("nosuch")


def test_long_documents_become_passages_on_one_side_of_the_split(tmp_path):
    paras = "\n\n".join(f"Paragraph {i} " + "word " * 300 for i in range(20))
    j = tmp_path / "long.jsonl"
    j.write_text("".join(json.dumps({"id": f"d{k}", "text": paras}) + "\n" for k in range(30)))
    docs = read_corpus(str(j))
    assert len(docs) > 30 and all(len(d.text) <= 4000 for d in docs)
    train, held = split_documents(docs, seed=0, heldout_fraction=0.3)
    assert held and train and not {d.source for d in train} & {d.source for d in held}
    again = split_documents(docs, seed=0, heldout_fraction=0.3)
    assert [d.id for d in again[1]] == [d.id for d in held]
    other = split_documents(docs, seed=1, heldout_fraction=0.3)
    assert [d.id for d in other[1]] != [d.id for d in held]


def test_jsonl_corpus_with_a_bom_keeps_its_first_line(tmp_path):
    lines = [json.dumps({"id": "first", "text": "Line one."}), json.dumps({"id": "second", "text": "Line two."})]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8") + b"\n")
    docs = read_corpus(str(path))
    assert [(d.id, d.text) for d in docs] == [("first", "Line one."), ("second", "Line two.")]


def test_duplicate_keys_in_a_corpus_line_are_an_error_naming_key_and_line(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps({"id": "ok", "text": "Fine."}) + "\n" + '{"id": "a", "text": "x", "text": "y"}\n')
    with pytest.raises(CorpusError, match=r"dup\.jsonl:2: duplicate key 'text'"):
        read_corpus(str(path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: not valid JSON"):
        read_corpus(str(bad))


def test_txt_folder_with_a_bom_reads_correctly(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"\xef\xbb\xbfBonjour, caf\xc3\xa9.")
    (folder / "b.txt").write_bytes(b"Plain text.")
    docs = read_corpus(str(folder))
    assert [(d.id, d.text) for d in docs] == [("a.txt", "Bonjour, café."), ("b.txt", "Plain text.")]


def test_txt_folder_with_bytes_that_are_not_utf8_is_an_error_naming_the_file(tmp_path):
    """Bad bytes are never silently replaced by U+FFFD: that text would be the harness's, not the corpus's."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text("A fine document. " * 20, encoding="utf-8")
    (folder / "bad.txt").write_bytes(b"caf\xe9 au lait " * 20)  # Latin-1, not UTF-8
    with pytest.raises(CorpusError, match=r"bad\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"):
        list(read_corpus(str(folder)))
