"""Full-vector validation as a stream (issue 15 part 3, ``predictors.stream``): whole rows checked into one reused
buffer and handed on a chunk at a time are ``validate_file``'s rows bit for bit, with the same rejections (same
messages, line order), accepted ids, missing prompts and sparse rows; the buffer is the only place whole rows live
(bounded memory, checked by the buffer object and tracemalloc, not by timing)."""

import json
import tracemalloc

import numpy as np
import pytest

from predictors.jsonl import READ_BUFFER, decode_line, validate_file
from predictors.stream import FileStream, chunk_size
from tests.predictors.test_jsonl_fast import BG, LINES, VOCAB, V, b64, vector

MB = 1 << 20


def mixed_file(tmp_path):
    """Every shortcut case of test_jsonl_fast (accepted and rejected), vectors with zeros (kept whole / sparse), a
    float64 ``probs`` list, ``top`` lines, a duplicate, an unknown id, a blank line, in an order other than the
    suite's; returns (path, suite ids)."""
    ids = [f"p{i}" for i in range(60)]
    lines = [text.replace('"p1"', f'"p{40 - i}"') for i, (text, _) in enumerate(LINES.values())]
    lines += [
        json.dumps({"prompt_id": "p45", "probs_b64": b64(vector(3, zeros=100))}),  # whole, from float64
        json.dumps({"prompt_id": "p44", "probs_b64": b64(vector(4, zeros=V - 20))}),  # kept sparse
        json.dumps({"prompt_id": "p50", "probs": vector(5).astype(np.float64).tolist()}),  # a float64 list
        json.dumps({"prompt_id": "p46", "top": {"t3": 0.5}, "rest": "unigram"}),
        json.dumps({"prompt_id": "p47", "probs_b64": b64(vector(6))}),
        json.dumps({"prompt_id": "p47", "probs_b64": b64(vector(7))}),  # duplicate: the first is kept
        json.dumps({"prompt_id": "nope", "probs_b64": b64(vector(8))}),  # not in the split
        "",
        json.dumps({"prompt_id": "p48", "top": {"t9": 0.2, "t10": 0.3}}),
    ]
    lines += [json.dumps({"prompt_id": f"p{i}", "probs_b64": b64(vector(100 + i))}) for i in range(59, 51, -1)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, ids


def drain(stream):
    """Every chunk's rows copied out: (positions, line numbers, rows, the buffer each chunk's rows were a view of)."""
    positions, lines, rows, bases = [], [], [], []
    for chunk in stream:
        assert chunk.probs.dtype == np.float64 and len(chunk.probs) <= len(stream.buffer)
        assert len(chunk.positions) == len(chunk.lines) == len(chunk.probs) > 0
        bases.append(chunk.probs.base is stream.buffer or chunk.probs is stream.buffer)
        positions.append(chunk.positions)
        lines.append(chunk.lines)
        rows.append(chunk.probs.copy())
    return np.concatenate(positions), np.concatenate(lines), np.concatenate(rows), bases


@pytest.mark.parametrize("rows", [1, 3, 7, None])
def test_the_stream_gives_validate_files_rows_and_messages(tmp_path, rows):
    path, ids = mixed_file(tmp_path)
    old = validate_file(path, ids, VOCAB, BG)
    stream = FileStream(path, ids, VOCAB, BG, rows=rows)
    positions, lines, got, bases = drain(stream)
    rest = stream.rest()
    assert all(bases) and stream.buffer.shape == (rows or chunk_size(V), V)
    assert rest.prompt_ids == old.prompt_ids and rest.errors == old.errors and rest.missing == old.missing
    assert len(old.errors) > 20 and len(old.prompt_ids) > 15  # the file has both, for the comparison to mean much
    at = {p: j for j, p in enumerate(old.prompt_ids)}
    whole = [at[ids[i]] for i in positions]
    assert all(old.rows.is_full[whole]) and old.rows.is_full.sum() == len(positions)
    for j, row in zip(whole, got, strict=True):
        np.testing.assert_array_equal(row, old.probs[j])  # bit for bit
    sparse = [at[p] for p in rest.sparse.prompt_ids]
    assert not old.rows.is_full[sparse].any() and len(sparse) + len(positions) == len(old.prompt_ids)
    np.testing.assert_array_equal(rest.sparse.probs, old.probs[sparse])
    assert sorted(set(positions.tolist()) | {ids.index(p) for p in rest.sparse.prompt_ids}) == sorted(
        ids.index(p) for p in old.prompt_ids)
    text = path.read_bytes().split(b"\n")  # each row's line number names the line it came from
    assert all(decode_line(n, text[n - 1])["prompt_id"] == ids[i] for n, i in zip(lines, positions, strict=True))


def test_whole_rows_live_only_in_the_reused_buffer(tmp_path):
    """60 accepted vectors (23.6 MB of float64 rows at V = 49,152) through a 4-row buffer: every chunk is a view of
    the same buffer, and the peak of traced memory is the buffer, the file's read buffer and a line or two (its text
    and decoded vector), not 60 rows."""
    import base64

    from tasks.vocab import Vocabulary

    big = 49152
    vocab = Vocabulary([f"t{i}" for i in range(big)], [f"t{i}" for i in range(big)])
    rng = np.random.default_rng(0)
    ids = [f"p{i:03d}" for i in range(100)]
    path = tmp_path / "full.jsonl"
    with open(path, "w") as f:
        for n in range(60):
            q = rng.random(big).astype("<f4") + np.float32(1e-3)
            q /= q.sum(dtype=np.float64)
            f.write(json.dumps({"prompt_id": ids[59 - n], "probs_b64": base64.b64encode(q.tobytes()).decode()}) + "\n")
    tracemalloc.start()
    try:
        stream = FileStream(path, ids, vocab, rows=4)
        buffer, sizes = stream.buffer, []
        for chunk in stream:
            assert chunk.probs.base is buffer and stream.buffer is buffer
            sizes.append(len(chunk.positions))
        rest = stream.rest()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    row = big * 8
    assert sizes == [4] * 15 and len(rest.prompt_ids) == 60 and rest.sparse.prompt_ids == []
    assert buffer.nbytes == 4 * row
    line = path.stat().st_size / 60
    assert peak <= buffer.nbytes + READ_BUFFER + 3 * line + MB < 60 * row / 2, (
        f"peak {peak / MB:.1f} MiB; 60 rows are {60 * row / MB:.1f} MiB")


def test_the_stream_is_read_once_and_rest_comes_after_it(tmp_path):
    path, ids = mixed_file(tmp_path)
    stream = FileStream(path, ids, VOCAB, BG)
    with pytest.raises(RuntimeError, match="iterate over the stream first"):
        stream.rest()
    drain(stream)
    with pytest.raises(RuntimeError, match="streamed already"):
        next(iter(stream))
    assert stream.rest().errors


def test_chunk_size_is_the_buffer_entries_over_the_vocabulary():
    assert chunk_size(49152) == (1 << 21) // 49152 == 42 and chunk_size(256000) == 8 and chunk_size(1 << 22) == 1
