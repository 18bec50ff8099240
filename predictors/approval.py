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

The one check (``require_approved``): every entry point that runs a predictor -- ``predictors.create`` (so the
Python API, the CLI's ``predict``/``run``, the gate, ``evals/approve.py``), the inspect provider ``predictor/NAME``, the
CLI's ``score`` of a predictions file (``file_approval``) and the human form's export -- asks it, and it either raises
``ApprovalError`` (naming the predictor, why, the approval command and the opt-in) or returns the approval metadata
every result of the run must carry: ``approved``, ``approval`` (the reason, in words), ``exploratory`` (an unapproved
system run with the explicit opt-in), ``level`` and ``approval_key``. The opt-in is the same everywhere:
``allow_unapproved`` (``--allow-unapproved``, ``-M allow_unapproved=true``, ``allow_unapproved=True``); the gate has
none.

Writes to the registry (``add_record``, ``revoke``) are serialized by an ``fcntl`` lock on ``approvals.json.lock`` and
replace the file atomically (``tasks.io.atomic_write_json``): concurrent approvals all land, and a kill leaves the old
registry or the new one.

Left out: signatures on records (anyone who can write the data dir can forge one); approval expiry; locking across
machines (``fcntl`` locks are local; a registry on a network file system is not protected).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_json, read_json
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
# How each entry point opts in to an exploratory run (named in every refusal).
OPT_IN = ("--allow-unapproved (logitpred predict/run/score), -M allow_unapproved=true (inspect eval), "
          "allow_unapproved=True (Python: predictors.create)")


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
        obj = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:  # malformed JSON, a duplicate key, bad UTF-8
        raise ApprovalError(f"approval registry {path} is not valid JSON ({e}): restore it from a backup") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ApprovalError(f"{path} is not a logitpred approval registry (format {found!r}, expected {FORMAT})")
    try:
        return [ApprovalRecord(**r) for r in obj["records"]]
    except (KeyError, TypeError) as e:
        raise ApprovalError(f"approval registry {path} has a malformed record ({e}): restore it from a backup") from e


@contextmanager
def _locked(path: Path | None = None) -> Iterator[Path]:
    """Hold the registry's write lock (``fcntl`` on the sidecar ``approvals.json.lock``) for a read-modify-write.

    The lock file is never replaced (the registry is, atomically), so every writer locks the same inode.
    """
    path = path or registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_records(records: list[ApprovalRecord], path: Path | None = None) -> None:
    """Replace the registry atomically (temp file, fsync, rename, fsync of the folder); call it under ``_locked``."""
    atomic_write_json(path or registry_path(), {"format": FORMAT, "records": [asdict(r) for r in records]})


def add_record(record: ApprovalRecord, path: Path | None = None) -> ApprovalRecord:
    """Append a record: read, append and replace under the registry lock, so concurrent approvals all land."""
    with _locked(path) as p:
        records = load_records(p)
        records.append(record)
        _save_records(records, p)
    return record


def revoke(key_or_name: str, reason: str = "", path: Path | None = None) -> list[ApprovalRecord]:
    """Mark every valid record whose key (or a key prefix of >= 6 chars) or system name matches as revoked."""
    with _locked(path) as p:
        records = load_records(p)
        hits = [r for r in records if r.valid and (r.system["name"] == key_or_name
                                                     or (len(key_or_name) >= 6 and r.key.startswith(key_or_name)))]
        if not hits:
            raise ApprovalError(f"no valid approval matches {key_or_name!r}: `logitpred approvals` lists them")
        now = datetime.now(UTC).isoformat()
        for r in hits:
            r.revoked_at, r.revoke_reason = now, reason or "revoked by user"
        _save_records(records, p)
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
            members = options[k]
            return [parse_member(m) for m in ([members] if isinstance(members, str) else members)]  # as factories read it
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

    if name.startswith("version:"):  # a version of a target: weights, precision, quantization (predictors/version.py)
        from .version import version_system_identity

        return version_system_identity(name, options)
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


def _known(name: str) -> bool:
    """Load the predictor registry (built-ins and entry points: their ``declare_level0`` calls run on import) and say
    whether ``name`` is registered."""
    from .base import available

    return name in available()


def _check(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The approval metadata of a system, never raising for an unapproved one (``approved`` false, ``why`` set).

    Raises ``ApprovalError`` if the registry is unreadable, and the model loader's error (``HelperError``,
    ``MappingError``) if the system cannot be identified.
    """
    known = _known(name)
    if is_level0(name, options):
        return {"approved": True, "approval": f"{name!r} is level 0: corpus statistics, baselines and humans run no "
                "model", "exploratory": False, "level": 0, "approval_key": None}
    if not known:
        return {"approved": False, "approval": f"unknown predictor {name!r}", "exploratory": False, "level": None,
                "approval_key": None, "why": "unknown"}
    ident = system_identity(name, options)
    records = [r for r in load_records() if r.key == ident["key"]]
    valid = [r for r in records if r.valid]
    if valid:
        rec = valid[-1]
        return {"approved": True, "approval": f"{name!r} (identity {ident['key']}) approved at level {rec.level} on "
                f"{', '.join(s['name'] for s in rec.suites)} ({rec.approved_at[:19]})", "exploratory": False,
                "level": rec.level, "approval_key": rec.key}
    if records:
        last = records[-1]
        why = (f"{name!r} (identity {ident['key']}) has no valid approval record: its approval was revoked "
               f"{(last.revoked_at or '')[:19]} ({last.revoke_reason})")
    else:
        why = f"{name!r} (identity {ident['key']}) has no valid approval record"
    return {"approved": False, "approval": why, "exploratory": False, "level": None, "approval_key": None,
            "why": "unapproved"}


def approval_status(name: str, options: dict[str, Any] | None = None) -> tuple[bool, str]:
    """(approved?, reason) for the predictor ``name`` created with ``options`` (for listings; runs use
    ``require_approved``).

    Never raises for an unapproved system; raises ``ApprovalError`` (or the model loader's error) only when the
    system cannot be identified (e.g. a helper path that does not exist) or the registry is unreadable.
    """
    meta = _check(name, options)
    if meta["approved"]:
        return True, meta["approval"]
    return False, (f"{meta['approval']}: approve it with `{approve_command(name, options)}` or run it exploratory "
                   "with --allow-unapproved")


def approve_command(name: str, options: dict[str, Any] | None = None) -> str:
    opts = "".join(f" -O {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (options or {}).items())
    return f"logitpred approve {name}{opts}"


def require_approved(name: str, options: dict[str, Any] | None = None, *, allow_unapproved: bool = False,
                     opt_in: str | None = OPT_IN) -> dict[str, Any]:
    """THE approval check: raise ``ApprovalError`` unless ``name``/``options`` is level 0 or has a valid approval
    record, or ``allow_unapproved`` opts in to an exploratory run; return the metadata every result must carry.

    Returns ``{"approved": bool, "approval": reason, "exploratory": bool, "level": int | None,
    "approval_key": str | None}``: ``exploratory`` is true exactly when an unapproved system runs by the opt-in. Merge
    it into the run record's predictor entry (``{**meta, **require_approved(...)}``): leaderboards and reports print
    "(unapproved)" from ``approved``. ``opt_in`` is how the caller's user opts in, named in the refusal (the default
    names every entry point's); ``None`` where there is no opt-in (the gate, approvers in ``evals/approve.py``). An unknown name is refused ("unknown predictor",
    with the registered ones listed). A system that cannot be identified (a helper path that does not exist) raises
    the loader's error (``HelperError``/``MappingError``, both ``ValueError``s), or with the opt-in runs exploratory.
    """
    options = dict(options or {})
    try:
        meta = _check(name, options)
    except ApprovalError:
        raise  # an unreadable registry is never opted out of
    except (ValueError, OSError) as e:
        if not allow_unapproved:
            raise
        meta = {"approved": False, "approval": f"{name!r} cannot be identified ({e})", "exploratory": False,
                "level": None, "approval_key": None, "why": "unidentified"}
    why = meta.pop("why", None)
    if meta["approved"]:
        return meta
    if not allow_unapproved:
        if why == "unknown":
            from .base import unknown_message

            raise ApprovalError(unknown_message(name))
        how = f", or run it exploratory, every result marked unapproved: {opt_in}" if opt_in else ""
        raise ApprovalError(f"gated evaluation refused: {meta['approval']}. Approve it with "
                            f"`{approve_command(name, options)}`{how}")
    return {**meta, "exploratory": True}


def file_approval(meta: dict[str, Any] | None, *, allow_unapproved: bool = False) -> dict[str, Any]:
    """The approval metadata for scoring a predictions file, from its ``.meta.json`` (``None`` when it has none).

    A file without metadata is a prediction made elsewhere (``file:``), level 0 (``LEVEL0_PREFIXES``; for a hard wall,
    submit files). Otherwise the predictor it names is checked now with ``require_approved``: a file written by an
    exploratory ``predict`` (``approved: false`` or ``exploratory: true`` in its metadata) carries its opt-in and is
    scored marked unapproved; a file that claims or implies approval is refused if its system is not approved now
    (revoked since, or metadata edited), unless ``allow_unapproved``.
    """
    if meta is None:
        return {"approved": True, "approval": "a predictions file without metadata is level 0 (file:)",
                "exploratory": False, "level": 0, "approval_key": None}
    name = meta.get("name")
    if not isinstance(name, str):
        raise ApprovalError("the predictions file's metadata names no predictor ('name'): fix or delete it")
    options = meta.get("options") if isinstance(meta.get("options"), dict) else {}
    opted_in = meta.get("approved") is False or meta.get("exploratory") is True
    return require_approved(name, options, allow_unapproved=allow_unapproved or opted_in)
