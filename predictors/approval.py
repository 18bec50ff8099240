"""Which predictors may take part in a gated evaluation: level-0 systems and helpers with a valid approval record.

The rule (DESIGN.md, "approved helper"): humans and corpus statistics run no model and are approved by definition
(level 0). Any other system -- a helper language model, a composite of predictors, a predictor we do not recognise --
is approved only if the approval registry holds a valid (not revoked) record for *its identity*: the hash of its
weights and tokenizer for a model, the spec and member identities for a composite. A composite of approved members is
a new system with its own identity, so its members' records never approve it.

The registry is a versioned JSON file, ``<data_dir>/approvals.json`` (format ``logitpred-approvals/1``), written
atomically. Each record holds the system (predictor name and options), its identity, level, the suites and thresholds
of the evaluation, the scores and the evidence runs. Records are never deleted: ``revoke`` marks them revoked, and
``approve`` of the same identity appends a newer record. How a system is evaluated lives in ``evals/approve.py``.

Left out: signatures on records (anyone who can write the data dir can forge one); approval expiry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.paths import data_dir

FORMAT = "logitpred-approvals/1"
# Corpus statistics and trivial baselines: they read only the train text (DESIGN.md), so they are level 0.
LEVEL0 = {"uniform", "unigram", "ngram", "ngram-domain", "suffix", "mixture"}
# humans (web form: "human", "human:NAME", "human-team") and files of predictions made elsewhere ("file:..."); exact
# names and "prefix:" forms only, so a model registered as e.g. "humanoid" cannot pass as a human
LEVEL0_PREFIXES = ("human:", "file:")
LEVEL0.update({"human", "human-team"})
# Option keys under which a composite names its members (``mixture`` of issue 4 and ``composite`` here).
MEMBER_KEYS = ("members", "components", "predictors")
NON_OUTPUT_OPTIONS = ("batch_size", "cache", "progress")
COMPOSITE_DEFAULTS = {"composite": {"kind": "mixture", "temperature": True}, "mixture": {"temperature": True}}


def declare_level0(name: str) -> None:
    """Declare a predictor that reads only the train text (no model) level 0; call it next to its ``@register``."""
    LEVEL0.add(name)


class ApprovalError(ValueError):
    """An approval request or registry operation failed; nothing was written."""


@dataclass
class ApprovalRecord:
    key: str  # identity key of the approved system (see ``system_identity``)
    system: dict[str, Any]  # {"name": ..., "options": ...} as given to ``predictors.create``
    identity: dict[str, Any]
    level: int
    suites: list[dict[str, Any]]  # name, version, commitment of each suite evaluated
    thresholds: dict[str, float]
    scores: dict[str, Any]  # per suite: metric -> value
    evidence: list[str]  # run ids / folders of the evaluation
    approvers: list[str]  # predictors that predicted the system
    approved_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    revoked_at: str | None = None
    revoke_reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.revoked_at is None


def registry_path() -> Path:
    return data_dir() / "approvals.json"


def load_records(path: Path | None = None) -> list[ApprovalRecord]:
    """All records, oldest first; a missing file is an empty registry, a foreign or corrupt one an error."""
    path = path or registry_path()
    if not path.is_file():
        return []
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ApprovalError(f"approval registry {path} is not valid JSON ({e}): restore it from a backup") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ApprovalError(f"{path} is not a logitpred approval registry (format {obj.get('format')!r}, "
                            f"expected {FORMAT})")
    return [ApprovalRecord(**r) for r in obj["records"]]


def _save_records(records: list[ApprovalRecord], path: Path | None = None) -> None:
    path = path or registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "records": [asdict(r) for r in records]}, indent=2))
    tmp.replace(path)


def add_record(record: ApprovalRecord, path: Path | None = None) -> ApprovalRecord:
    records = load_records(path)
    records.append(record)
    _save_records(records, path)
    return record


def revoke(key_or_name: str, reason: str = "", path: Path | None = None) -> list[ApprovalRecord]:
    """Mark every valid record whose key (or a key prefix of >= 6 chars) or system name matches as revoked."""
    records = load_records(path)
    hits = [r for r in records if r.valid and (r.system["name"] == key_or_name
                                                 or (len(key_or_name) >= 6 and r.key.startswith(key_or_name)))]
    if not hits:
        raise ApprovalError(f"no valid approval matches {key_or_name!r}: `logitpred approvals` lists them")
    now = datetime.now(UTC).isoformat()
    for r in hits:
        r.revoked_at, r.revoke_reason = now, reason or "revoked by user"
    _save_records(records, path)
    return hits


def find_valid(key: str, path: Path | None = None) -> ApprovalRecord | None:
    """The newest valid record for an identity key."""
    valid = [r for r in load_records(path) if r.key == key and r.valid]
    return valid[-1] if valid else None


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def members_of(options: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """Members named in a composite's options, as (name, options) pairs (see ``predictors.composite.parse_member``)."""
    from .composite import parse_member

    for k in MEMBER_KEYS:
        if options and options.get(k):
            return [parse_member(m) for m in options[k]]
    return []


def is_level0(name: str, options: dict[str, Any] | None = None) -> bool:
    """True for systems approved by definition: baselines, corpus statistics, humans, prediction files.

    A ``mixture`` is level 0 only if every member is (a mixture holding a helper model is a composite that needs its
    own approval).
    """
    if name.startswith(LEVEL0_PREFIXES):
        return True
    if name not in LEVEL0:
        return False
    return all(is_level0(n, o) for n, o in members_of(options))


def system_identity(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identity of a system: what an approval is bound to. ``key`` is a 16-hex digest of the rest.

    Models are identified by weights and tokenizer hashes (``predictors.model.helper_identity``), so the same weights
    under another path or name are the same system, plus the settings that change their output (mapping coverage,
    smoothing, rest rule, context); composites by their kind, fitting settings and members' identities; anything
    else by its name and options. Options that do not change outputs (batch size, caching, progress) are left out.
    """
    options = dict(options or {})
    from .model import MODEL_PREDICTORS, helper_identity, output_settings

    if name in MODEL_PREDICTORS:
        path = MODEL_PREDICTORS[name](options)
        ident = {"kind": "model", **helper_identity(path), "settings": output_settings(path, options)}
    elif members_of(options):
        rest = {**COMPOSITE_DEFAULTS.get(name, {}),
                **{k: v for k, v in options.items() if k not in (*MEMBER_KEYS, *NON_OUTPUT_OPTIONS)}}
        ident = {"kind": "composite", "name": name, "settings": rest,
                 "members": [system_identity(n, o)["key"] for n, o in members_of(options)]}
    else:
        ident = {"kind": "predictor", "name": name, "options": options}
    return {**ident, "key": hashlib.sha256(canonical(ident).encode()).hexdigest()[:16]}


def approval_status(name: str, options: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(approved?, reason) for the predictor ``name`` created with ``options``.

    Never raises for an unapproved system; raises ``ApprovalError`` (or the model loader's error) only when the
    system cannot be identified (e.g. a helper path that does not exist) or the registry is unreadable.
    """
    if is_level0(name, options):
        return True, f"{name!r} is level 0: corpus statistics, baselines and humans run no model"
    ident = system_identity(name, options)
    record = find_valid(ident["key"])
    if record is None:
        return False, (f"{name!r} (identity {ident['key']}) has no valid approval record: approve it with "
                       f"`{approve_command(name, options)}` or run it exploratory with --allow-unapproved")
    return True, (f"{name!r} (identity {ident['key']}) approved at level {record.level} on "
                  f"{', '.join(s['name'] for s in record.suites)} ({record.approved_at[:19]})")


def approve_command(name: str, options: dict[str, Any] | None = None) -> str:
    opts = "".join(f" -O {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (options or {}).items())
    return f"logitpred approve {name}{opts}"


def require_approved(name: str, options: dict[str, Any] | None = None, *, allow_unapproved: bool = False
                     ) -> dict[str, Any]:
    """Gate check used by the CLI: raise unless approved or explicitly allowed; returns record fields for the run.

    The returned dict (``approved``, ``approval``) goes into the run record's predictor entry, so results of an
    exploratory run with an unapproved helper are marked unapproved in every leaderboard and report.
    """
    ok, reason = approval_status(name, options)
    if not ok and not allow_unapproved:
        raise ApprovalError(f"gated evaluation refused: {reason}")
    return {"approved": ok, "approval": reason}
