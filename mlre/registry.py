"""MLflow model-registry lifecycle: aliases (not stages), gate decisions and an audit trail.

State lives in the registry itself, so every client (CLI, Prefect flows, the serving layer) sees
the same thing:

- aliases `champion`, `challenger`, `previous-champion` on the registered model;
- gate decisions as model-version tags (`gate.passed`, `gate.reasons`);
- the audit trail as registered-model tags `audit.000001`, `audit.000002`, ... each holding one
  compact JSON record (kept under `AUDIT_VALUE_MAX` characters, far below MLflow's tag limit).

Promotion and rollback hold a caller-supplied lock (`file_lock(settings)` here, or the Prefect
layer's `flows.locks.prefect_lock`) while
they read, write and then verify the state, so two racing promotions cannot leave
champion == previous-champion or lose an audit record. The audit record is written before the
aliases, so no alias points where the trail does not say; when the MLflow server dies in between
(ServiceUnavailableError, which flows retry), running the same promotion or rollback again
completes it without a second record.

Without the lock, the checks after each write (the record still ours and the last one, the aliases
as read, then as written) turn a race into a RegistryError, and what the losing call wrote and no
one changed since is undone; a write the server refuses is a RegistryError too. They cannot give
back another writer's record that a sequential write overwrote: preventing that is the lock's job.

Rollback is one step: `previous-champion` becomes `champion` again, the rolled-back version is
tagged `rolled_back=true` (promoting it again needs `force=True`), and `previous-champion` is
removed, so a second rollback fails loudly instead of flip-flopping between two versions.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from mlre.errors import MlreError, ServiceUnavailableError
from mlre.mlflow_uri import mlflow_answering, server_unreachable
from mlre.settings import Settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

GATE_PASSED_TAG = "gate.passed"
GATE_REASONS_TAG = "gate.reasons"
ROLLED_BACK_TAG = "rolled_back"
ROLLED_BACK_REASON_TAG = "rolled_back.reason"

AUDIT_PREFIX = "audit."
AUDIT_DIGITS = 6
# MLflow's SQL store allows 100k characters per registry tag, Databricks Unity Catalog far fewer;
# records stay small so the trail is portable and cheap to read in one get_registered_model call.
AUDIT_VALUE_MAX = 4000
REASON_MAX = 1000
FIELD_MAX = 200
GATE_REASONS_MAX = 4000

LOCK_TIMEOUT_S = 120.0
READY = "READY"
_TRUNCATED = "…[truncated]"

LockFactory = Callable[[str], AbstractContextManager[Any]]


class RegistryError(MlreError):
    """A registry operation was refused or left the registry in a state it could not verify."""


# --------------------------------------------------------------------------------------------
# Audit records
# --------------------------------------------------------------------------------------------


def _clip(value: str, limit: int) -> str:
    """Shorten a free-text value to `limit` characters, marking that it was cut."""
    return value if len(value) <= limit else value[: limit - len(_TRUNCATED)] + _TRUNCATED


@dataclass(frozen=True)
class AuditRecord:
    """One promotion/rollback of a registered model (`seq` is None when nothing was stored)."""

    when: str
    action: str
    from_version: str | None
    to_version: str
    reason: str
    run_id: str
    actor: str
    seq: int | None = None

    def to_json(self) -> str:
        """Compact JSON under AUDIT_VALUE_MAX characters (free text is clipped, never dropped)."""
        payload = asdict(self)
        payload["reason"] = _clip(self.reason, REASON_MAX)
        for key in ("run_id", "actor", "action"):
            payload[key] = _clip(str(payload[key]), FIELD_MAX)
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        if len(text) > AUDIT_VALUE_MAX:
            raise RegistryError(
                f"Audit record for version {self.to_version} is {len(text)} characters "
                f"(limit {AUDIT_VALUE_MAX}); shorten its reason, run_id or actor."
            )
        return text

    @classmethod
    def from_json(cls, text: str) -> AuditRecord:
        """Parse a stored record; a corrupt one is a RegistryError naming it."""
        try:
            payload = json.loads(text)
            return cls(**{name: payload.get(name) for name in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"Corrupt audit record {text[:80]!r}: {exc}") from exc

    @property
    def recorded(self) -> bool:
        """Whether this record is part of the stored history (no-ops are not)."""
        return self.seq is not None


def audit_key(seq: int) -> str:
    """Tag key of audit record `seq` (zero-padded so the MLflow UI lists them in order)."""
    return f"{AUDIT_PREFIX}{seq:0{AUDIT_DIGITS}d}"


_AUDIT_KEY = re.compile(rf"^{re.escape(AUDIT_PREFIX)}(\d+)$")


def audit_seqs(tags: Mapping[str, str]) -> list[int]:
    """Sequence numbers of the audit tags among `tags`, ascending (numeric, not lexical)."""
    return sorted(int(m.group(1)) for key in tags if (m := _AUDIT_KEY.match(key)))


def records_from_tags(tags: Mapping[str, str]) -> list[AuditRecord]:
    """The audit trail stored in a registered model's tags, oldest first."""
    records = []
    for seq in audit_seqs(tags):
        record = AuditRecord.from_json(tags[audit_key(seq)])
        records.append(AuditRecord(**{**asdict(record), "seq": seq}))
    return records


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------


def file_lock(settings: Settings, timeout_s: float = LOCK_TIMEOUT_S) -> LockFactory:
    """A lock factory for the CLI and tests: one lock file per model under `home/locks`."""
    from filelock import FileLock, Timeout

    @contextmanager
    def lock(model_name: str) -> Iterator[None]:
        folder = settings.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"promotion-{safe_name(model_name)}.lock"
        # thread_local=False: the lock is taken and released by the same call, and a fresh
        # FileLock per call means threads contend through flock() exactly like processes do.
        try:
            with FileLock(path, timeout=timeout_s, thread_local=False):
                yield
        except Timeout as exc:
            raise RegistryError(
                f"Could not take the promotion lock {path} for model {model_name!r} within "
                f"{timeout_s:.0f} s; another promotion is running (or hung: stop it, then retry)."
            ) from exc

    return lock


def safe_name(model_name: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)


# --------------------------------------------------------------------------------------------
# Reading registry state
# --------------------------------------------------------------------------------------------


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def get_model(client: MlflowClient, model_name: str) -> RegisteredModel:
    """The registered model, or a RegistryError saying how to create it."""
    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if _not_found(exc):
            raise RegistryError(
                f"Registered model {model_name!r} does not exist; train and register it first "
                "(the ml-pipeline flow, or mlflow.sklearn.log_model(registered_model_name=...))."
            ) from exc
        raise


def get_version(client: MlflowClient, model_name: str, version: str | int) -> ModelVersion:
    """A model version, or a RegistryError naming the versions that do exist."""
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        known = sorted(
            (v.version for v in client.search_model_versions(f"name = '{model_name}'")),
            key=int,
        )
        raise RegistryError(
            f"Model {model_name!r} has no version {version}; existing versions: {known or 'none'}."
            " Pass one of them (mlre promote MODEL VERSION)."
        ) from exc


def history(client: MlflowClient, model_name: str) -> list[AuditRecord]:
    """The promotion/rollback audit trail of a model, oldest first."""
    return records_from_tags(get_model(client, model_name).tags)


def champion_version(client: MlflowClient, model_name: str) -> ModelVersion | None:
    """The champion's version; None when nothing was ever promoted (a normal state)."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return _resolve_alias(client, model, CHAMPION)


def _resolve_alias(client: MlflowClient, model: RegisteredModel, alias: str) -> ModelVersion | None:
    """The version an alias points at; a dangling or vanished alias is a RegistryError."""
    version = model.aliases.get(alias)
    if version is None:
        if alias == CHAMPION:
            _check_champion_not_lost(model)
        return None
    try:
        found = client.get_model_version_by_alias(model.name, alias)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        raise RegistryError(
            f"Alias {alias!r} of model {model.name!r} points at version {version}, which no "
            "longer exists (deleted?). Promote an existing READY version "
            f"(mlre promote {model.name} VERSION) or roll back."
        ) from exc
    if found.status != READY:
        raise RegistryError(
            f"Alias {alias!r} of model {model.name!r} points at version {found.version} whose "
            f"status is {found.status}; promote a READY version instead."
        )
    return found


def _check_champion_not_lost(model: RegisteredModel) -> None:
    """Raise if the audit trail says a champion existed but the alias is gone.

    MLflow drops a version's aliases when the version is deleted, so a deleted champion would
    otherwise look like "no champion yet" and inference would quietly stop.
    """
    records = records_from_tags(model.tags)
    if records:
        last = records[-1]
        raise RegistryError(
            f"Model {model.name!r} has no {CHAMPION!r} alias, but the audit trail says version "
            f"{last.to_version} became champion at {last.when} ({last.action}); that version was "
            f"probably deleted, which removes its aliases. Promote an existing READY version "
            f"(mlre promote {model.name} VERSION)."
        )


# --------------------------------------------------------------------------------------------
# Gate decisions
# --------------------------------------------------------------------------------------------


def _gate_tags(passed: bool, reasons: list[str]) -> dict[str, str]:
    text = json.dumps([_clip(str(r), REASON_MAX) for r in reasons], ensure_ascii=False)
    return {GATE_PASSED_TAG: str(passed).lower(), GATE_REASONS_TAG: _clip(text, GATE_REASONS_MAX)}


def _set_version_tags(
    client: MlflowClient, model_name: str, version: str, tags: Mapping[str, str]
) -> None:
    for key, value in tags.items():
        try:
            client.set_model_version_tag(model_name, version, key, value)
        except MlflowException as exc:
            if server_unreachable(exc):
                raise
            raise _write_refused(
                exc, model_name, f"tagging version {version}", f"tag {key!r}",
                "Tags written before it stay; writing them again is harmless.",
            ) from exc  # fmt: skip


def mark_challenger(
    client: MlflowClient,
    model_name: str,
    version: str | int,
    reasons: list[str],
    *,
    lock: LockFactory | None = None,
) -> ModelVersion:
    """Record a passed gate on the version and point `challenger` at it."""
    mv = get_version(client, model_name, version)
    with lock(model_name) if lock else nullcontext():
        _set_version_tags(client, model_name, mv.version, _gate_tags(True, reasons))
        client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    return mv


def record_refusal(
    client: MlflowClient, model_name: str, version: str | int, reasons: list[str]
) -> ModelVersion:
    """Record a failed gate on the version (tags only; aliases are never touched)."""
    mv = get_version(client, model_name, version)
    _set_version_tags(client, model_name, mv.version, _gate_tags(False, reasons))
    return mv


# --------------------------------------------------------------------------------------------
# Promotion and rollback
# --------------------------------------------------------------------------------------------


def refusal_reasons(mv: ModelVersion, *, force: bool = False) -> list[str]:
    """Why a version may not become champion (empty list: it may)."""
    reasons = []
    if mv.status != READY:
        reasons.append(f"status is {mv.status}, not {READY} (wait for registration to finish)")
    if force:
        return reasons
    tags = mv.tags or {}
    if tags.get(GATE_PASSED_TAG) == "false":
        reasons.append(
            f"the evaluation gate refused it ({tags.get(GATE_REASONS_TAG, 'no reasons recorded')});"
            " pass force=True (mlre promote --force) to override"
        )
    if tags.get(ROLLED_BACK_TAG) == "true":
        reasons.append(
            f"it was rolled back ({tags.get(ROLLED_BACK_REASON_TAG, 'no reason recorded')});"
            " pass force=True (mlre promote --force) to promote it again"
        )
    return reasons


@dataclass(frozen=True)
class _Aliases:
    """The three lifecycle aliases as read at one moment."""

    champion: str | None
    previous: str | None
    challenger: str | None

    @classmethod
    def of(cls, model: RegisteredModel) -> _Aliases:
        # The REST store answers version numbers as strings, a SQL store URI as ints: normalise.
        aliases = {name: str(version) for name, version in model.aliases.items()}
        return cls(aliases.get(CHAMPION), aliases.get(PREVIOUS_CHAMPION), aliases.get(CHALLENGER))


def _write_aliases(client: MlflowClient, model_name: str, target: _Aliases, now: _Aliases) -> None:
    """Move aliases from `now` to `target`; champion first, so a reader never sees no champion."""
    for alias, want, have in (
        (CHAMPION, target.champion, now.champion),
        (PREVIOUS_CHAMPION, target.previous, now.previous),
        (CHALLENGER, target.challenger, now.challenger),
    ):
        if want == have:
            continue
        if want is None:
            client.delete_registered_model_alias(model_name, alias)
        else:
            client.set_registered_model_alias(model_name, alias, want)


def _write_refused(
    exc: MlflowException, model_name: str, doing: str, what: str, undone: str
) -> RegistryError:
    """A write the MLflow server answered with an error (a UNIQUE-constraint clash of two writers,
    a locked database, an invalid value) as a RegistryError naming what was written and what to
    do. A server that did not answer is not this: callers let that become ServiceUnavailableError.
    """
    return RegistryError(
        f"Model {model_name!r}: {doing} failed writing {what}: the MLflow server refused it "
        f"({_clip(str(exc.message), FIELD_MAX)}). {undone} This is what two promotions or "
        "rollbacks of the same model writing at once look like: run them under the promotion "
        "lock (mlre promote and the flows take it; pass lock=file_lock(settings) or "
        "flows.locks.prefect_lock), then retry."
    )


def _raced(model_name: str, doing: str, problems: list[str], undone: str) -> RegistryError:
    """Another writer changed the registry under this operation (it held no lock)."""
    return RegistryError(
        f"Model {model_name!r}: {doing} raced another writer: {'; '.join(problems)}. {undone} "
        "Another promotion or rollback wrote this model without the promotion lock: run them "
        "under it (mlre promote and the flows take it; pass lock=file_lock(settings) or "
        "flows.locks.prefect_lock), check `mlre history` against the aliases, then retry."
    )


def _doing(record: AuditRecord) -> str:
    return f"the {record.action} to version {record.to_version}"


def _append_audit(client: MlflowClient, model: RegisteredModel, record: AuditRecord) -> AuditRecord:
    """Store `record` under the next sequence number (the caller holds the lock).

    A refused write stored nothing, so there is nothing to undo; a server that does not answer
    passes unchanged (`mlflow_answering` makes it a ServiceUnavailableError).
    """
    seqs = audit_seqs(model.tags)
    seq = (seqs[-1] if seqs else 0) + 1
    stored = AuditRecord(**{**asdict(record), "seq": seq})
    try:
        client.set_registered_model_tag(model.name, audit_key(seq), stored.to_json())
    except MlflowException as exc:
        if server_unreachable(exc):
            raise
        raise _write_refused(
            exc, model.name, _doing(record), f"audit record {audit_key(seq)}",
            "Nothing was changed.",
        ) from exc  # fmt: skip
    return stored


def _record_problems(model: RegisteredModel, record: AuditRecord) -> list[str]:
    """Why `record` is not (or no longer) the last stored audit record of `model`."""
    assert record.seq is not None
    key, problems = audit_key(record.seq), []
    if model.tags.get(key) != record.to_json():
        problems.append(f"audit record {key} was overwritten or is missing")
    if (last := audit_seqs(model.tags)[-1:]) and last[0] > record.seq:
        problems.append(f"a later audit record {audit_key(last[0])} was stored by another writer")
    return problems


def _check_stored(
    client: MlflowClient, model_name: str, before: _Aliases, record: AuditRecord
) -> None:
    """Re-read after storing the audit record and before moving any alias: the record must be
    ours and the last one, and champion / previous-champion where they were read. Without a lock
    this is where a second writer that read the same state is caught, before it moves anything."""
    model = client.get_registered_model(model_name)
    problems = _record_problems(model, record)
    now = _Aliases.of(model)
    if (now.champion, now.previous) != (before.champion, before.previous):
        problems.append(
            f"champion / previous-champion are {now.champion} / {now.previous}, not "
            f"{before.champion} / {before.previous} as read (if that writer stored its audit "
            f"record as {audit_key(record.seq or 0)} too, this one overwrote it)"
        )
    if problems:
        undone = _undo(client, model_name, before, before, record)
        raise _raced(model_name, _doing(record), problems, undone)


def _verify(
    client: MlflowClient, model_name: str, target: _Aliases, record: AuditRecord
) -> list[str]:
    """Re-read the registry: how it differs from exactly what this operation wrote (empty: not)."""
    model = client.get_registered_model(model_name)
    after = _Aliases.of(model)
    problems = []
    if after.champion != target.champion:
        problems.append(f"champion is {after.champion}, expected {target.champion}")
    if after.previous != target.previous:
        problems.append(f"previous-champion is {after.previous}, expected {target.previous}")
    if after.champion is not None and after.champion == after.previous:
        problems.append("champion and previous-champion point at the same version")
    return problems + _record_problems(model, record)


def _apply(
    client: MlflowClient, model: RegisteredModel, target: _Aliases, record: AuditRecord
) -> AuditRecord:
    """Store the audit record, check it, then move the aliases (champion first), then verify.

    The record goes first, so an alias never points where the trail does not say (no orphan
    alias). A server that dies in between leaves the aliases behind the last record; running the
    same promotion or rollback again completes it (`unfinished`). Other failures are undone.
    """
    before = _Aliases.of(model)
    stored = _append_audit(client, model, record)
    assert stored.seq is not None
    _check_stored(client, model.name, before, stored)
    try:
        _write_aliases(client, model.name, target, before)
    except (MlflowException, OSError) as exc:
        if isinstance(exc, OSError) or server_unreachable(exc):
            raise ServiceUnavailableError(
                f"Model {model.name!r}: the MLflow server {client.tracking_uri} stopped answering "
                f"during the {record.action} to version {record.to_version}, after audit record "
                f"{audit_key(stored.seq)} was stored ({exc}). Once it answers, re-run the same "
                f"{record.action}: it completes this one without a second record."
            ) from exc
        undone = _undo(client, model.name, before, target, stored)
        raise _write_refused(exc, model.name, _doing(record), "the aliases", undone) from exc
    if problems := _verify(client, model.name, target, stored):
        undone = _undo(client, model.name, before, target, stored)
        raise _raced(model.name, _doing(record), problems, undone)
    return stored


def _undo(
    client: MlflowClient,
    model_name: str,
    before: _Aliases,
    target: _Aliases,
    record: AuditRecord | None,
) -> str:
    """Best effort: put back what this operation wrote and nobody changed since (an alias still at
    its `target`, the audit record if it is still this one's); say what was done, log a failure."""
    try:
        model = client.get_registered_model(model_name)
        now = _Aliases.of(model)
        # Only values still as this operation left them go back; another writer's stay.
        restore = _Aliases(
            *(
                was if have == want else have
                for was, want, have in zip(
                    (before.champion, before.previous, before.challenger),
                    (target.champion, target.previous, target.challenger),
                    (now.champion, now.previous, now.challenger),
                    strict=True,
                )
            )
        )
        _write_aliases(client, model_name, restore, now)
        done = [
            f"{alias} put back to {was}"
            for alias, was, have in (
                (CHAMPION, restore.champion, now.champion),
                (PREVIOUS_CHAMPION, restore.previous, now.previous),
                (CHALLENGER, restore.challenger, now.challenger),
            )
            if was != have
        ]
        if record is not None and record.seq is not None:
            key = audit_key(record.seq)
            if model.tags.get(key) == record.to_json():
                client.delete_registered_model_tag(model_name, key)
                done.append(f"its audit record {key} removed")
        return f"Undone: {', '.join(done)}." if done else "Nothing it wrote was left to undo."
    except (MlflowException, OSError):
        log.exception(
            "Model %r: could not undo to champion=%s previous-champion=%s (audit record %s); "
            "fix them by hand (mlflow UI or mlre promote).",
            model_name,
            before.champion,
            before.previous,
            audit_key(record.seq or 0) if record else "none",
        )
        return (
            f"Undoing it failed too (see the log): set champion={before.champion}, "
            f"previous-champion={before.previous} by hand if they differ."
        )


def _previous_after(record: AuditRecord) -> str | None:
    """previous-champion once `record` is fully applied (a rollback leaves none)."""
    return record.from_version if record.action == "promote" else None


def unfinished(
    model: RegisteredModel, action: str, version: str | None = None
) -> AuditRecord | None:
    """The last audit record when it is `action` (to `version`) and the aliases do not show it
    yet: an operation whose server stopped answering after the record was stored."""
    records = records_from_tags(model.tags)
    if not records:
        return None
    last = records[-1]
    if last.action != action or (version is not None and last.to_version != version):
        return None
    now = _Aliases.of(model)
    done = now.champion == last.to_version and now.previous == _previous_after(last)
    challenger_left = action == "promote" and now.challenger == last.to_version
    return None if done and not challenger_left else last


def _existing(client: MlflowClient, model_name: str, version: str | None) -> str | None:
    """`version` if it still exists (an alias cannot point at a deleted version), else None."""
    if version is None:
        return None
    try:
        client.get_model_version(model_name, version)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    return version


def _complete(client: MlflowClient, model: RegisteredModel, record: AuditRecord) -> AuditRecord:
    """Finish an operation cut off after its audit record: move the aliases it records."""
    now = _Aliases.of(model)
    promoted = record.action == "promote"
    target = _Aliases(
        champion=record.to_version,
        previous=_existing(client, model.name, _previous_after(record)),
        challenger=None if promoted and now.challenger == record.to_version else now.challenger,
    )
    doing = f"completing {_doing(record)}"
    # The record is the interrupted operation's, not this call's to remove: only aliases go back.
    try:
        _write_aliases(client, model.name, target, now)
    except MlflowException as exc:
        if server_unreachable(exc):
            raise
        undone = _undo(client, model.name, now, target, None)
        raise _write_refused(exc, model.name, doing, "the aliases", undone) from exc
    if problems := _verify(client, model.name, target, record):
        raise _raced(model.name, doing, problems, _undo(client, model.name, now, target, None))
    log.warning(
        "Model %r: completed the interrupted %s to version %s (%s).",
        model.name,
        record.action,
        record.to_version,
        audit_key(record.seq or 0),
    )
    return record


def _noop_record(version: str, *, reason: str, run_id: str, actor: str) -> AuditRecord:
    """What a promotion of the current champion returns: not stored, `recorded` is False."""
    return AuditRecord(
        when=_now_iso(),
        action="noop",
        from_version=version,
        to_version=version,
        reason=f"version {version} is already champion; nothing changed ({reason})",
        run_id=run_id,
        actor=actor,
    )


def promote(
    client: MlflowClient,
    model_name: str,
    version: str | int,
    *,
    reason: str,
    run_id: str,
    actor: str,
    lock: LockFactory,
    force: bool = False,
) -> AuditRecord:
    """Make `version` the champion, keep the old one as previous-champion, and audit it."""
    version = str(version)
    doing = f"promoting model {model_name!r} to version {version}"
    with lock(model_name), mlflow_answering(client.tracking_uri, doing, "re-run the promotion"):
        model = get_model(client, model_name)
        if (pending := unfinished(model, "promote", version)) is not None:
            return _complete(client, model, pending)
        mv = get_version(client, model_name, version)
        now = _Aliases.of(model)
        if now.champion == version:
            log.info("Model %r version %s is already champion; nothing to do.", model_name, version)
            return _noop_record(now.champion, reason=reason, run_id=run_id, actor=actor)
        if problems := refusal_reasons(mv, force=force):
            raise RegistryError(
                f"Refusing to promote model {model_name!r} version {version}: "
                f"{'; '.join(problems)}."
            )
        record = AuditRecord(
            when=_now_iso(),
            action="promote",
            from_version=now.champion,
            to_version=version,
            reason=reason,
            run_id=run_id,
            actor=actor,
        )
        target = _Aliases(
            champion=version,
            previous=now.champion,
            challenger=None if now.challenger == version else now.challenger,
        )
        stored = _apply(client, model, target, record)
    log.info("Model %r: champion %s -> %s (%s)", model_name, now.champion, version, reason)
    return stored


def rollback(
    client: MlflowClient,
    model_name: str,
    *,
    reason: str,
    run_id: str,
    actor: str,
    lock: LockFactory,
) -> AuditRecord:
    """Restore previous-champion as champion; the rolled-back version is tagged, not deleted."""
    doing = f"rolling back model {model_name!r}"
    with lock(model_name), mlflow_answering(client.tracking_uri, doing, "re-run the rollback"):
        model = get_model(client, model_name)
        if (pending := unfinished(model, "rollback")) is not None:
            _tag_rolled_back(client, model_name, pending.from_version, pending.reason)
            return _complete(client, model, pending)
        now = _Aliases.of(model)
        if now.previous is None:
            raise RegistryError(
                f"Model {model_name!r} has no {PREVIOUS_CHAMPION!r} alias to roll back to "
                "(nothing promoted twice yet, or already rolled back once); promote a specific "
                f"version instead (mlre promote {model_name} VERSION --force)."
            )
        restored = _resolve_alias(client, model, PREVIOUS_CHAMPION)
        assert restored is not None
        record = AuditRecord(
            when=_now_iso(),
            action="rollback",
            from_version=now.champion,
            to_version=restored.version,
            reason=reason,
            run_id=run_id,
            actor=actor,
        )
        target = _Aliases(champion=restored.version, previous=None, challenger=now.challenger)
        stored = _apply(client, model, target, record)
        _tag_rolled_back(client, model_name, now.champion, reason)
    log.info(
        "Model %r: rolled back %s -> %s (%s)", model_name, now.champion, restored.version, reason
    )
    return stored


def _tag_rolled_back(
    client: MlflowClient, model_name: str, version: str | None, reason: str
) -> None:
    """Mark the version a rollback replaced, so promoting it again needs force=True."""
    if version is not None:
        tags = {ROLLED_BACK_TAG: "true", ROLLED_BACK_REASON_TAG: _clip(reason, REASON_MAX)}
        _set_version_tags(client, model_name, version, tags)
