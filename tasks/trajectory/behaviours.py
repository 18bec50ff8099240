"""Behaviour files and ``given`` continuations: each behaviour text applied after every prompt of a suite.

A behaviour file is JSONL, one ``{"id": str, "text": str}`` per line (e.g. a list of unwanted phrases); ids are
unique, non-empty and hold no whitespace; texts are non-empty. It is read strictly (``tasks.io.loads_json``: duplicate
keys rejected; unknown keys rejected), and identified by the sha256 of its bytes, which is part of the suite's version.

A (prompt, behaviour) pair is *given* the continuation ``y`` = what the target tokenizer makes of ``prompt text +
behaviour text`` beyond the prompt's own tokens (``tasks.tokens.encode_text``: special-token strings are text). The
pair is left out (and counted) when the text merges with the prompt across the boundary (the encoding does not begin
with the prompt's ids: ``"dog" + "s are"`` becomes ``"dogs are"``), when nothing is left beyond the prompt, or when
``y`` is longer than the suite's continuation length ``M`` (prompt + continuation must fit the cuts' room). A behaviour
that fits no prompt of the suite at all is an error naming it and the two encodings (alone, and after a prompt).

Left out: any normalisation of behaviour texts (a leading space is the writer's choice: " damn" and "damn" differ).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import loads_json
from ..tokens import encode_text
from ..truth import SuiteError

ID = re.compile(r"\S{1,100}")
REASONS = ("boundary_merge", "empty", "longer_than_continuation")


@dataclass(frozen=True)
class Behaviour:
    id: str
    text: str


@dataclass(frozen=True)
class Given:
    """One kept (prompt, behaviour) pair: ``token_ids`` is the continuation, the tokens beyond the prompt's."""

    prompt_id: str
    behaviour: Behaviour
    token_ids: tuple[int, ...]


def parse_behaviours(data: bytes, source: str = "behaviour file") -> list[Behaviour]:
    """The behaviours of a JSONL file's bytes, in file order. Raises ``SuiteError`` naming the line (1-based) and what
    is wrong: not UTF-8, not a JSON object, duplicate or unknown keys, a missing/empty/whitespace id or text, a
    repeated id, or no behaviour at all."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise SuiteError(f"{source}: not UTF-8 text ({e})") from e
    out: list[Behaviour] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = loads_json(line)
        except ValueError as e:
            raise SuiteError(f"{source} line {n}: not JSON ({e})") from e
        if not isinstance(obj, dict):
            raise SuiteError(f"{source} line {n}: a behaviour is a JSON object {{\"id\", \"text\"}}, got "
                             f"{type(obj).__name__}")
        if unknown := sorted(set(obj) - {"id", "text"}):
            raise SuiteError(f"{source} line {n}: unknown key(s) {unknown}: a behaviour has only \"id\" and \"text\"")
        bid, body = obj.get("id"), obj.get("text")
        if not isinstance(bid, str) or not ID.fullmatch(bid):
            raise SuiteError(f"{source} line {n}: \"id\" must be a string of 1 to 100 characters without "
                             f"whitespace, got {bid!r}")
        if not isinstance(body, str) or not body:
            raise SuiteError(f"{source} line {n} (behaviour {bid!r}): \"text\" must be a non-empty string, got {body!r}")
        if bid in seen:
            raise SuiteError(f"{source} line {n}: behaviour id {bid!r} repeats line {seen[bid]}: give each id once")
        seen[bid] = n
        out.append(Behaviour(bid, body))
    if not out:
        raise SuiteError(f"{source}: no behaviours (one JSON object {{\"id\", \"text\"}} per line)")
    return out


def read_behaviours(path: str | Path) -> tuple[list[Behaviour], bytes, str]:
    """``(behaviours, the file's bytes, their sha256)`` of a behaviour file. Raises ``SuiteError`` for a missing or
    unreadable file, and as ``parse_behaviours`` does."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SuiteError(f"behaviour file {str(path)!r} cannot be read ({e}): give an existing JSONL file "
                         "(--behaviours)") from e
    return parse_behaviours(data, f"behaviour file {str(path)!r}"), data, hashlib.sha256(data).hexdigest()


def _encode_after(tokenizer: Any, prompts: Sequence[Any], text: str) -> list[list[int]]:
    return encode_text(tokenizer, [p.text + text for p in prompts])


def given_pairs(prompts: Sequence[Any], behaviours: Sequence[Behaviour], tokenizer: Any,
                max_tokens: int) -> tuple[list[Given], dict[str, dict[str, int]]]:
    """The kept pairs of ``prompts`` (objects with ``id``, ``text``, ``token_ids``) and ``behaviours``, in prompt
    order and, per prompt, behaviour order; and per behaviour id the pairs left out by reason (``REASONS``:
    ``boundary_merge``, ``empty``, ``longer_than_continuation`` than ``max_tokens``) and ``kept``. Pure in the
    tokenizer; raises nothing (``check_fit`` raises for a behaviour that fits no prompt)."""
    kept: dict[tuple[int, int], tuple[int, ...]] = {}
    counts = {b.id: {"kept": 0, **dict.fromkeys(REASONS, 0)} for b in behaviours}
    for j, b in enumerate(behaviours):
        for i, (p, full) in enumerate(zip(prompts, _encode_after(tokenizer, prompts, b.text), strict=True)):
            n = len(p.token_ids)
            cont = tuple(full[n:])
            if list(full[:n]) != list(p.token_ids):
                reason = "boundary_merge"
            elif not cont:
                reason = "empty"
            elif len(cont) > max_tokens:
                reason = "longer_than_continuation"
            else:
                kept[(i, j)] = cont
                counts[b.id]["kept"] += 1
                continue
            counts[b.id][reason] += 1
    pairs = [Given(p.id, b, kept[(i, j)]) for i, p in enumerate(prompts) for j, b in enumerate(behaviours)
             if (i, j) in kept]
    return pairs, counts


def check_fit(prompts: Sequence[Any], behaviours: Sequence[Behaviour], counts: dict[str, dict[str, int]],
              tokenizer: Any, max_tokens: int, suite: str) -> None:
    """Raise ``SuiteError`` for the first behaviour that fits none of ``prompts`` (all of a suite's, both splits;
    ``counts`` as ``given_pairs`` gives them, summed over the splits): the message names the behaviour, its text, its
    encoding alone and its encoding after the first prompt (with the prompt's own last ids, so a merge across the
    boundary shows), the pairs left out by reason, and how to fix it."""
    for b in behaviours:
        if counts[b.id]["kept"] or not prompts:
            continue
        alone = encode_text(tokenizer, b.text)
        p = prompts[0]
        full = _encode_after(tokenizer, [p], b.text)[0]
        n = len(p.token_ids)
        tail = list(p.token_ids[max(0, n - 3):])
        if list(full[:n]) != list(p.token_ids):
            why = "the text merges with the prompt's last tokens across the boundary"
        else:
            why = f"{len(full) - n} tokens beyond the prompt's"
        raise SuiteError(
            f"suite {suite!r}: behaviour {b.id!r} ({b.text!r}) fits no prompt: alone it encodes to {alone} "
            f"({len(alone)} tokens; continuations hold at most {max_tokens}); after prompt {p.id}, whose ids end "
            f"{tail}, prompt + text encodes to ...{list(full[max(0, n - 3):])} ({why}). Left out: "
            f"{', '.join(f'{counts[b.id][r]} {r}' for r in REASONS)}. Start the text at a word boundary (e.g. with "
            "a space), shorten it, or raise --continuation")
