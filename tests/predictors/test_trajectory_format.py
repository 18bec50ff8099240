"""Trajectory predictions (issue 12 part 4): every rejection names its field and ids, files are validated line by line
(line numbers, BOM, duplicates naming the first line), log10 is converted, and the rest of a file is still accepted."""

import gzip
import json
import math

import pytest

from predictors.trajectory_format import (
    Rejection,
    TrajectoryError,
    TrajectoryPrediction,
    missing,
    parse_line,
    validate_file,
    write_jsonl,
)

KNOWN = {("p1", "c0"): 3, ("p1", "c1"): 2, ("p2", "c0"): 1}
PROMPTS = {"p1", "p2"}


def q(**kw):
    return {"prompt_id": "p1", "continuation_id": "c0", **kw}


def test_accepts_logprob_with_steps():
    p = parse_line(q(logprob=-6.0, steps=[-1.0, -2.0, -3.0]), KNOWN)
    assert p == TrajectoryPrediction("p1", "c0", -6.0, (-1.0, -2.0, -3.0))
    assert parse_line(q(logprob=-6, meta={"note": 1}), KNOWN).steps is None


def test_log10prob_is_converted_to_nats_with_its_steps():
    p = parse_line(q(log10prob=-2.0, steps=[-0.5, -0.5, -1.0]), KNOWN)
    assert p.logprob == -2.0 * math.log(10)
    assert p.steps == tuple(s * math.log(10) for s in (-0.5, -0.5, -1.0))


def test_tiny_positive_rounding_reads_as_zero():
    p = parse_line(q(logprob=1e-6, steps=[5e-7, 0, 0]), KNOWN)
    assert p.logprob == 0.0 and p.steps == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("obj, field, message", [
    (q(logprob=float("nan")), "logprob", "must be finite"),
    (q(logprob=float("-inf")), "logprob", "must be finite"),
    (q(log10prob=float("inf")), "log10prob", "must be finite"),
    (q(logprob=-(10 ** 400)), "logprob", "must be finite"),
    (q(logprob=0.01), "logprob", r"0.01 > 0: a log-probability is <= 0"),
    (q(logprob=2e-6), "logprob", "> 0"),
    (q(logprob="-3"), "logprob", "expected a number"),
    (q(logprob=True), "logprob", "expected a number"),
    (q(logprob=-1.0, log10prob=-0.4), "logprob", "got both"),
    (q(), "logprob", "got neither"),
    (q(logprob=-3.0, steps=[-1.0, -2.0]), "steps", "has 2 entries; the continuation has 3 tokens"),
    (q(logprob=-3.0, steps=-3.0), "steps", "must be a list"),
    (q(logprob=-3.0, steps=[-1.0, float("nan"), -2.0]), "steps[1]", "must be finite"),
    (q(logprob=-3.0, steps=[-4.0, 2.0, -1.0]), "steps[1]", "> 0"),
    (q(logprob=-3.0, steps=[-1.0, -1.0, -1.0002]), "steps", r"sum to -3.000200 nats but logprob is -3.000000"),
    (q(logprob=-1.0, probs=[0.1]), "probs", r"unknown field\(s\) \['probs'\]"),
])
def test_rejections_name_the_field_and_ids(obj, field, message):
    with pytest.raises(TrajectoryError, match=message) as e:
        parse_line(obj, KNOWN)
    assert e.value.field == field and e.value.ids == ("p1", "c0")
    assert str(e.value).startswith("prompt 'p1' continuation 'c0': ")


def test_steps_sum_within_tolerance_is_accepted():
    assert parse_line(q(logprob=-3.0, steps=[-1.0, -1.0, -1.00009]), KNOWN).logprob == -3.0


@pytest.mark.parametrize("obj, field, message", [
    ({"prompt_id": "p9", "continuation_id": "c0", "logprob": -1}, "prompt_id", "unknown prompt_id 'p9'"),
    ({"prompt_id": "p2", "continuation_id": "c7", "logprob": -1}, "continuation_id",
     "unknown continuation_id 'c7': prompt 'p2' has no such continuation"),
    ({"continuation_id": "c0", "logprob": -1}, "prompt_id", "missing or empty 'prompt_id'"),
    ({"prompt_id": "p1", "continuation_id": 3, "logprob": -1}, "continuation_id", "missing or empty 'continuation_id'"),
    ([1, 2], None, "expected a JSON object, got list"),
])
def test_unknown_and_missing_ids_are_named(obj, field, message):
    with pytest.raises(TrajectoryError, match=message) as e:
        parse_line(obj, KNOWN, prompts=PROMPTS)
    assert e.value.field == field


def test_unknown_question_without_prompt_list_names_both_ids():
    with pytest.raises(TrajectoryError, match=r"unknown question \(prompt_id 'p2', continuation_id 'c7'\)"):
        parse_line({"prompt_id": "p2", "continuation_id": "c7", "logprob": -1}, KNOWN)


def test_file_rejects_line_by_line_and_keeps_the_rest(tmp_path):
    lines = [
        b"\xef\xbb\xbf" + json.dumps(q(logprob=-5.0)).encode(),  # 1: BOM at the start of the file is fine
        b"",  # 2: blank, skipped
        json.dumps({"prompt_id": "p1", "continuation_id": "c1", "log10prob": -1.0, "steps": [-0.5, -0.5]}).encode(),
        b'{"prompt_id": "p2", "continuation_id": "c0", "logprob": NaN}',  # 4
        json.dumps(q(logprob=-4.0)).encode(),  # 5: duplicate of line 1
        b'{"prompt_id": "p2", "prompt_id": "p2"}',  # 6: duplicate key
        b"\xef\xbb\xbf{}",  # 7: BOM inside the file
        b'{"prompt_id": "p2", "continuation_id": "c0", "logprob": -1.5, "steps": [-1.5]}',  # 8: p2's first claim was 4
        b"{not json",  # 9
        b'{"prompt_id": "p\xff", "continuation_id": "c0", "logprob": -1}',  # 10: bad UTF-8
        b'{"prompt_id": "p9", "continuation_id": "c0", "logprob": -1}',  # 11
    ]
    path = tmp_path / "traj.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    accepted, rejected = validate_file(path, KNOWN)
    assert [(p.prompt_id, p.continuation_id) for p in accepted] == [("p1", "c0"), ("p1", "c1")]
    assert accepted[0].logprob == -5.0 and accepted[1].logprob == pytest.approx(-math.log(10))
    assert [r.line for r in rejected] == [4, 5, 6, 7, 8, 9, 10, 11]
    by_line = {r.line: r for r in rejected}
    assert by_line[4].ids == ("p2", "c0") and "logprob is nan" in by_line[4].message
    assert by_line[5].ids == ("p1", "c0") and "already given at line 1" in by_line[5].message
    assert by_line[8].ids == ("p2", "c0") and "already given at line 4" in by_line[8].message
    assert "duplicate key 'prompt_id'" in by_line[6].message and by_line[6].ids is None
    assert "byte-order mark" in by_line[7].message
    assert "malformed JSON" in by_line[9].message
    assert "not valid UTF-8 (byte 0xff" in by_line[10].message
    assert "unknown prompt_id 'p9'" in by_line[11].message
    assert str(by_line[5]).startswith("line 5: prompt 'p1' continuation 'c0': duplicate question")
    assert missing(KNOWN, accepted) == [("p2", "c0")]


def test_write_reads_back_and_gz_is_read(tmp_path):
    preds = [TrajectoryPrediction("p1", "c0", -6.000000000000001, (-1.0, -2.0, -3.000000000000001)),
             TrajectoryPrediction("p2", "c0", -0.1)]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, preds) == 2
    assert validate_file(path, KNOWN) == (preds, [])
    gz = tmp_path / "out.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert validate_file(gz, KNOWN).accepted == preds


def test_truncated_gz_keeps_lines_before_the_damage(tmp_path):
    text = "".join(json.dumps({"prompt_id": "p1", "continuation_id": f"c{i}", "logprob": -1.0}) + "\n"
                   for i in range(2000))
    known = {("p1", f"c{i}"): 1 for i in range(2000)}
    data = gzip.compress(text.encode())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    accepted, rejected = validate_file(gz, known)
    assert accepted and len(rejected) == 1 and "cannot read the file" in rejected[0].message
    assert rejected[0] == Rejection(len(accepted) + 1, None, rejected[0].message)
