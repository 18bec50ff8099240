"""Found suites: the prompts a ``logitpred search`` found, frozen into a suite (issue 14 part 3).

``build_found_suite`` reads one or more search results folders (``run.json``, ``best.jsonl``, ``frontier.jsonl``;
``tasks.search.driver`` describes the records), keeps every distinct prompt (by its target token ids) whose per-token
plausibility ``ref_per_token`` (log P_R(x | prefix) per free token, nats) is at least ``min_plausibility``, and
publishes a suite of them as ``tasks.suite.build_suite`` does (build folder, synced, one link switch). Its truth is
the normal truth path: the target's next-token distribution after each prompt (``Suite.compute_truth``).

- **Rows.** A found prompt is its record's ``prompt_text`` / ``prompt_ids`` (re-checked: the text must encode to the
  ids). Its "realized" next token is the first token of the behaviour o the search elicited (there is no source
  document); a trajectory suite (``continuation = M``, at most the shortest o's length) takes o's first M tokens as
  the realized continuation, and the searched behaviours of at most M tokens as given continuations of every prompt
  (``tasks.trajectory``), so each such o is asked whole after every found prompt.
- **Split.** The unit is a *source*: one (search run, behaviour) pair. Prompts of one source share the prefix and
  often differ by one token, so all of a source go to one split (as whole documents do for corpus suites): sources
  in a seeded order fill practice up to half the prompts (or ``practice``), the rest is sealed (``sealed`` caps it).
- **No leak.** A prompt whose tokens contain any searched behaviour's tokens shows what other prompts hide: dropped
  and counted.
- **Refused** (``FoundError``, a ``SuiteError``: CLI exit 2): a folder that is not a finished search, a file whose
  sha256 differs from its ``run.json``, a search run against another target (its ``target.id`` or a record's), no
  prompt passing the bar, fewer than two sources (no split possible), sizes larger than what passed.
- **Predictors see nothing of the search.** The prompt rows hold what any suite's rows hold; the search's values
  (log P(o | x), plausibility, λ, method) go to ``found.jsonl`` in the suite folder, harness-side like the sealed
  rows' realized tokens. The manifest's ``role: shifted`` is what the gate reads as the suite's default role; its
  ``found`` section names the source runs by their ``run.json`` sha256, the bar and what was dropped, and is part of
  the suite version.

Left out: prompts paired by construction with an ordinary suite's prompts (the gap is paired per predictor,
``evals.gap``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import fsync_tree, read_json
from .paths import data_dir, sha256_file
from .truth import SPLITS, SuiteError

FOUND_FORMAT = "logitpred-found/1"
SEARCH_RUN_FORMAT = "logitpred-search-run/1"
# Per-token log P_R(x) of the free tokens, nats. The target's own log-loss on wiki text is about 2.6 nats per token
# (target CE of the realized token on the wiki sealed split), so -6 admits prompts about as surprising as
# twice-plus natural text and excludes random-search gibberish (-10 to -16 in docs/search.md).
DEFAULT_MIN_PLAUSIBILITY = -6.0


class FoundError(SuiteError):
    """A found suite cannot be built from these search results; the message names the folder or value and the fix."""


@dataclass(frozen=True)
class SearchRun:
    """One search results folder: ``run`` (its run.json), ``sha256`` (of run.json), ``records`` (best then frontier
    records), ``behaviours`` ({id: text} from the state's settings)."""

    folder: Path
    run: dict[str, Any]
    sha256: str
    records: list[dict[str, Any]]
    behaviours: dict[str, str]


def read_search(folder: Path) -> SearchRun:
    """Read a finished search's results folder; raises ``FoundError`` when run.json is missing or of another format,
    or a results file is missing or differs from the sha256 that run.json records for it."""
    folder = Path(folder)
    run_path = folder / "run.json"
    if not run_path.is_file():
        raise FoundError(f"{folder}: no run.json: not a finished `logitpred search` results folder (run the search to "
                         "its end, then give its --out folder)")
    try:
        run = read_json(run_path)
    except ValueError as e:
        raise FoundError(f"{run_path} is unreadable ({e}): run the search again") from e
    if not isinstance(run, dict) or run.get("format") != SEARCH_RUN_FORMAT:
        raise FoundError(f"{run_path}: format {run.get('format') if isinstance(run, dict) else None!r}, not "
                         f"{SEARCH_RUN_FORMAT}: give a folder written by `logitpred search`")
    records = []
    for name in ("best.jsonl", "frontier.jsonl", "state.json"):
        path = folder / name
        want = (run.get("files_sha256") or {}).get(name)
        if not path.is_file() or want != sha256_file(path):
            raise FoundError(f"{path} is missing or changed since the search wrote it (sha256 differs from run.json): "
                             "run the search again")
        if name.endswith(".jsonl"):
            records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    settings = read_json(folder / "state.json").get("settings", {})
    behaviours = {b["id"]: b.get("text") for b in settings.get("behaviours", [])}
    return SearchRun(folder, run, sha256_file(run_path), records, behaviours)


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def found_prompts(runs: list[SearchRun], tokenizer: Any, target_id: str, *,
                  min_plausibility: float = DEFAULT_MIN_PLAUSIBILITY) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The distinct found prompts that pass the bar, each ``{"record", "run"}`` (the first record of those prompt ids,
    run.json sha256), in a stable order, and what was dropped (``duplicate``, ``below_bar``, ``retokenizes``,
    ``shows_behaviour``). Raises ``FoundError`` for a search run against another target than ``target_id``."""
    from .tokens import encode_text

    members = [m for r in runs for rec in r.records for m in rec["members"]]
    seen: set[tuple[int, ...]] = set()
    kept, dropped = [], Counter()
    for r in runs:
        ids = {r.run.get("target", {}).get("id"), *(rec.get("target") for rec in r.records)}
        if ids != {target_id}:
            raise FoundError(f"{r.folder}: the search ran against target {sorted(map(str, ids - {target_id}))} but "
                             f"this suite's target is {target_id}: give --target the search's model, or search "
                             "again with this target")
        for rec in r.records:
            key = tuple(int(v) for v in rec["prompt_ids"])
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            if not rec["ref_per_token"] >= min_plausibility:
                dropped["below_bar"] += 1
            elif list(encode_text(tokenizer, rec["prompt_text"])) != list(key):
                dropped["retokenizes"] += 1
            elif any(_contains(list(key), list(m)) for m in members):
                dropped["shows_behaviour"] += 1
            else:
                kept.append({"record": rec, "run": r.sha256})
    return kept, dict(dropped)


def _row(name: str, found: dict[str, Any], m: int) -> dict[str, Any]:
    """A prompt row (``tasks.suite`` format) for one found prompt; ``m``: continuation tokens (0: none)."""
    rec = found["record"]
    ids = [int(v) for v in rec["prompt_ids"]]
    o = [int(v) for v in rec["members"][0]]
    pid = f"{name}-{hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12]}"
    source = f"search:{found['run'][:12]}:{rec['behaviour']}"
    row = {"id": pid, "doc": pid, "text": rec["prompt_text"], "token_ids": ids, "next_token_id": o[0],
           "source": source, "passage": source, "start": 0, "cut": len(ids)}
    if m:
        row["continuation_ids"] = o[:m]
    return row


def split_rows(rows: list[dict[str, Any]], seed: int, practice: int | None = None,
               sealed: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows by split, whole sources to one split (module doc). Raises ``FoundError`` for fewer than two sources or
    sizes larger than the rows give."""
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    names = sorted(by_source)
    if len(names) < 2:
        raise FoundError(f"the found prompts come from {len(names)} source(s) (search run, behaviour): a suite needs "
                         "two, one per split; search more behaviours or prefixes, or lower --min-plausibility")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    want = practice if practice is not None else len(rows) // 2
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for i, name in enumerate(order):
        last = i == len(order) - 1
        split = "practice" if (len(out["practice"]) < want and not (last and not out["sealed"])) else "sealed"
        out[split] += sorted(by_source[name], key=lambda r: r["id"])
    for s, n in (("practice", practice), ("sealed", sealed)):
        if n is not None and n > len(out[s]):
            raise FoundError(f"--{s} {n}: only {len(out[s])} found prompt(s) fall in the {s} split (whole sources per "
                             f"split, {len(rows)} prompts in all): ask for fewer")
        if n is not None:
            out[s] = out[s][:n]
    if not out["practice"] or not out["sealed"]:
        raise FoundError(f"the split left {len(out['practice'])} practice and {len(out['sealed'])} sealed prompts: "
                         "each needs one; give --practice N")
    return out


def _behaviour_file(runs: list[SearchRun], name: str, m: int) -> Path | None:
    """The searched behaviours of at most ``m`` target tokens as a behaviour file (``{"id", "text"}`` lines, first
    text per id) under the data dir; None when none is that short."""
    length = {rec["behaviour"]: max(len(x) for x in rec["members"]) for r in runs for rec in r.records}
    seen: dict[str, str] = {}
    for r in runs:
        for bid, text in r.behaviours.items():
            if length.get(bid, m + 1) > m:
                continue
            if text is None:
                raise FoundError(f"{r.folder}: behaviour {bid!r} has no text (several members): a trajectory found "
                                 "suite needs one text per behaviour")
            seen.setdefault(bid, text)
    if not seen:
        return None
    path = data_dir() / "found" / f"{name}-behaviours.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in seen.items()))
    return path


def build_found_suite(name: str, folders: list[Path], tokenizer: Any, identity: Any, vocab_size: int, *,
                      corpus: str = "wiki", seed: int = 0, heldout_fraction: float = 0.1,
                      min_plausibility: float = DEFAULT_MIN_PLAUSIBILITY, practice: int | None = None,
                      sealed: int | None = None, continuation: int = 0, samples: int = 0,
                      ordinary: str | None = None, context: int | None = None) -> Any:
    """Build and publish the found suite ``name`` from the search results ``folders`` (module doc); returns the
    ``tasks.Suite`` (truth not yet computed). ``corpus``/``seed``/``heldout_fraction`` name the train text that
    corpus-statistics predictors learn from (and the background unigram); ``ordinary`` the suite the gap compares
    with (recorded; default: ``corpus`` when it is a preset). Raises ``FoundError`` (module doc) or ``SuiteError``."""
    from .suite import PRESETS, SuiteConfig, _prompt, _write_build, load_suite, publish_build
    from .target import bos_ids

    runs = [read_search(Path(f)) for f in folders]
    if len({r.sha256 for r in runs}) != len(runs):
        raise FoundError("the same search results folder is given twice: give each once")
    found, dropped = found_prompts(runs, tokenizer, identity.id, min_plausibility=min_plausibility)
    if not found:
        raise FoundError(f"no found prompt has per-token plausibility >= {min_plausibility:g} nats (dropped: "
                         f"{dropped}): lower --min-plausibility or search with a larger λ")
    o_len = min(len(f["record"]["members"][0]) for f in found)
    if continuation > o_len:
        raise FoundError(f"--continuation {continuation}: the shortest searched behaviour has {o_len} token(s); give "
                         f"--continuation <= {o_len} (the behaviour is the realized continuation)")
    context = context or getattr(identity, "context", None)
    n_bos = len(bos_ids(tokenizer))
    rows = [_row(name, f, continuation) for f in found]
    too_long = [r["id"] for r in rows if context and n_bos + len(r["token_ids"]) + max(continuation, 1) > context]
    if too_long:
        raise FoundError(f"{len(too_long)} found prompt(s) do not fit the target's context {context}")
    if continuation:  # the realized continuation's text must follow the prompt's text token for token
        from .tokens import encode_text

        for r in rows:
            text = tokenizer.decode(r["continuation_ids"], clean_up_tokenization_spaces=False)
            r["continuation_text"] = text
            if list(encode_text(tokenizer, r["text"] + text)) != r["token_ids"] + r["continuation_ids"]:
                raise FoundError(f"prompt {r['id']}: its text followed by o's first {continuation} tokens does not "
                                 "re-tokenize; give a smaller --continuation")
    by_split = split_rows(rows, seed, practice, sealed)
    given = _behaviour_file(runs, name, continuation) if continuation else None
    behaviours = str(given) if given else None
    config = SuiteConfig(name, corpus, seed=seed, heldout_fraction=heldout_fraction,
                         practice=len(by_split["practice"]), sealed=len(by_split["sealed"]),
                         continuation=continuation, samples=samples, behaviours=behaviours)
    section, data = None, None
    if continuation:
        from .trajectory.spec import manifest_section

        section, data = manifest_section(config, {s: [_prompt(r) for r in by_split[s]] for s in SPLITS}, tokenizer)
    info = {"format": FOUND_FORMAT, "min_plausibility": float(min_plausibility), "dropped": dropped,
            "candidates": len(found), "ordinary": ordinary or (corpus if corpus in PRESETS else None),
            "runs": [{"folder": str(r.folder), "run_sha256": r.sha256, "method": r.run.get("method"),
                      "reference": r.run.get("reference", {}).get("name"), "budget": r.run.get("budget")}
                     for r in runs],
            "realized": "the first token of the searched behaviour o" + (f" (o's first {continuation} tokens as the "
                                                                         "realized continuation)" if continuation
                                                                         else "")}
    kept = {r["id"] for s in SPLITS for r in by_split[s]}
    provenance = [{"id": r["id"], **{k: f["record"][k] for k in ("behaviour", "method", "lambda", "log_p",
                                                                   "ref_per_token", "greedy_is_behaviour")},
                   "run_sha256": f["run"]} for r, f in zip(rows, found, strict=True) if r["id"] in kept]
    def write(build: Path) -> None:
        _write_build(build, config, by_split, tokenizer, identity, vocab_size, context, section, data)
        manifest = read_json(build / "manifest.json")
        where = {**info, "runs": [{k: v for k, v in r.items() if k != "folder"} for r in info["runs"]]}
        version = hashlib.sha256((manifest["version"] + json.dumps(where, sort_keys=True)).encode()).hexdigest()
        manifest.update(version=f"2-{version[:12]}", role="shifted", found=info)
        (build / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (build / "found.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in provenance))
        fsync_tree(build)

    publish_build(name, write)  # as tasks.suite.build_suite: under the name's lock, published atomically
    return load_suite(name)
