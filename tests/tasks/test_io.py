"""Strict JSON/YAML (duplicate keys), BOM-tolerant reading, atomic writes killed by a real SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tasks.io import (
    DuplicateKeyError,
    atomic_save_npy,
    atomic_write_json,
    load_yaml,
    loads_json,
    read_json,
    read_text,
    read_yaml,
)


def test_duplicate_json_keys_are_refused_naming_the_key():
    with pytest.raises(DuplicateKeyError, match="' the'"):
        loads_json('{"prompt_id": "P", "top": {" the": 0.7, " the": 0.2}}')
    with pytest.raises(DuplicateKeyError, match="prompt_id"):
        loads_json('{"prompt_id": "A", "prompt_id": "B"}')
    assert loads_json('{"a": {"b": 1}, "b": 2}') == {"a": {"b": 1}, "b": 2}  # same key at other levels is fine


def test_duplicate_yaml_keys_are_refused_with_line():
    text = "thresholds:\n  kl_nats: 3\n  top1: 0.2\n  kl_nats: 30\n"
    with pytest.raises(DuplicateKeyError, match=r"'kl_nats' at line 4"):
        load_yaml(text)
    assert load_yaml("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}


def test_bom_is_accepted(tmp_path):
    (tmp_path / "x.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())
    (tmp_path / "x.yaml").write_bytes(b"\xef\xbb\xbfa: 1\n")
    (tmp_path / "x.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert read_json(tmp_path / "x.json") == {"a": 1}
    assert read_yaml(tmp_path / "x.yaml") == {"a": 1}
    assert read_text(tmp_path / "x.txt") == "hello"
    assert loads_json("\ufeff[1]") == [1]


def test_atomic_write_replaces_whole(tmp_path):
    atomic_write_json(tmp_path / "s.json", {"v": 1})
    atomic_write_json(tmp_path / "s.json", {"v": 2})
    assert read_json(tmp_path / "s.json") == {"v": 2}
    atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "s.json"]  # no temporary file left


def test_kill_before_rename_keeps_old_content(tmp_path):
    """A real child process is killed with SIGKILL between writing the new file and renaming it."""
    path = tmp_path / "state.json"
    atomic_write_json(path, {"v": "old"})
    code = f"from tasks.io import atomic_write_json; atomic_write_json({str(path)!r}, {{'v': 'new' * 100000}})"
    env = {**os.environ, "LOGITPRED_KILL_AT": "before-rename:state.json"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.getcwd())
    assert proc.returncode == -9
    assert read_json(path) == {"v": "old"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == 0 and read_json(path)["v"].startswith("newnew")


def test_replace_dir_swaps_whole_folders(tmp_path):
    from tasks.io import replace_dir

    old, new = tmp_path / "helper", tmp_path / ".helper.new"
    old.mkdir()
    (old / "weights").write_text("old")
    (old / "only-old").write_text("x")
    new.mkdir()
    (new / "weights").write_text("new")
    replace_dir(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["weights"] and (old / "weights").read_text() == "new"
    assert not new.exists()
    fresh = tmp_path / ".other"
    fresh.mkdir()
    replace_dir(fresh, tmp_path / "created")
    assert (tmp_path / "created").is_dir()
