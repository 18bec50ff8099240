"""The rare-behaviour questions a predictor may see, and their truth (harness side).

Built from a reference record (``tasks.rare.reference``), temperature 1 only (a probability, not an indicator):

- a *distribution* line per input distribution: a product's prefix (text and ids), its free positions' token lists
  with their probabilities; a suite's name and split. The distribution is part of the question (public), the target's
  probabilities are not;
- an *aggregate* question per (distribution, behaviour): "P_D(B)?", ids ``prompt_id = <distribution>``,
  ``continuation_id = <behaviour>``;
- a *per-input* question per (input, behaviour): "P(B | x)?", ``prompt_id = <distribution>/x<i>`` with the input's
  ``token_ids`` (the product's prefix included; without BOS) and ``text``.

Every question line names the behaviour's ``members`` (target token ids) and ``texts``/``token``. Answers use the
whole-continuation prediction format (``predictors.trajectory_format``: ``{"prompt_id", "continuation_id",
"logprob" | "log10prob"}``, natural log or log10); ``steps`` are not used (a behaviour is a set of continuations).

Only practice suite splits may be distributions here (``check_public``): a sealed split's rare truth would be scored
without the holdout machinery of sealed splits, so it is refused (left out: sealed rare questions).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .spec import RareSpec, SpecError

Question = tuple[str, str]


def check_public(spec: RareSpec) -> None:
    """Raise ``SpecError`` for a suite distribution over a sealed split (module doc)."""
    for d in spec.distributions:
        if d["kind"] == "suite" and d["split"] == "sealed":
            raise SpecError(f"distribution {d['id']!r}: rare questions over a sealed split are not supported (their "
                            "truth would be scored without sealed-split hygiene); use split: practice")


def _behaviours(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in record["rows"]:
        if r["temperature"] == 1 and r["behaviour"] not in out:
            members = r.get("members") or [[r["token"]]]
            out[r["behaviour"]] = {"members": members, **({"token": r["token"]} if "token" in r else {})}
    spec_texts = {b["id"]: b["texts"] for b in record["spec"]["behaviours"] if "texts" in b}
    for bid, b in out.items():
        if bid in spec_texts:
            b["texts"] = spec_texts[bid]
    return out


def input_id(distribution: str, i: int) -> str:
    return f"{distribution}/x{i}"


def questions(record: dict[str, Any], tokenizer: Any) -> Iterator[dict[str, Any]]:
    """Every line a predictor may see (module doc), in record order: per distribution its line, its aggregate
    questions, then its per-input questions."""
    behs = _behaviours(record)
    for did, d in record["distributions"].items():
        rows = [r for r in record["rows"] if r["distribution"] == did and r["temperature"] == 1]
        if d["kind"] == "product":
            prefix = list(d["prefix"])
            yield {"distribution": did, "kind": "product", "prefix_ids": prefix,
                   "prefix_text": tokenizer.decode(prefix, clean_up_tokenization_spaces=False),
                   "positions": [[{"token_id": t, "text": tokenizer.decode([t]), "p": p}
                                  for t, p in zip(ids, probs, strict=True)]
                                 for ids, probs in zip(d["ids"], d["probs"], strict=True)]}
            inputs = [prefix + x for x in d["inputs"]]
        else:  # a suite's prompts or a helper's samples: the prompts are the per-input questions
            yield {"distribution": did, "kind": d["kind"], "prompts": len(d["inputs"]),
                   **{k: d[k] for k in ("suite", "split", "start", "tokens", "seed") if k in d},
                   **({"helper": d["helper"].get("name")} if "helper" in d else {})}
            inputs = [list(x) for x in d["inputs"]]
        for r in rows:
            yield {"prompt_id": did, "continuation_id": r["behaviour"], "question": "P_D(B)", **behs[r["behaviour"]]}
        for i, ids in enumerate(inputs):
            for r in rows:
                yield {"prompt_id": input_id(did, i), "continuation_id": r["behaviour"], "question": "P(B|x)",
                       "token_ids": ids, "text": tokenizer.decode(ids, clean_up_tokenization_spaces=False),
                       **behs[r["behaviour"]]}


def truth(record: dict[str, Any]) -> dict[Question, float]:
    """``{(prompt_id, continuation_id): exact P}`` of every question (temperature 1)."""
    out: dict[Question, float] = {}
    for r in record["rows"]:
        if r["temperature"] != 1:
            continue
        out[(r["distribution"], r["behaviour"])] = r["p_exact"]
        for i, p in enumerate(r.get("p_inputs") or []):
            out[(input_id(r["distribution"], i), r["behaviour"])] = p
    return out
