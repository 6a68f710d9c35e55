"""Audit records: JSON round trip, ordering of the history tags, size limits, refusal rules."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow.entities.model_registry import (
    ModelVersion,
    ModelVersionTag,
    RegisteredModel,
    RegisteredModelAlias,
    RegisteredModelTag,
)

from mlre.registry import (
    AUDIT_VALUE_MAX,
    FIELD_MAX,
    GATE_PASSED_TAG,
    GATE_REASONS_TAG,
    REASON_MAX,
    ROLLED_BACK_TAG,
    AuditRecord,
    RegistryError,
    audit_key,
    audit_seqs,
    file_lock,
    records_from_tags,
    refusal_reasons,
    unfinished,
)
from mlre.settings import Settings

pytestmark = pytest.mark.unit


def _record(**overrides: object) -> AuditRecord:
    fields: dict[str, object] = {
        "when": "2026-01-02T03:04:05.678+00:00",
        "action": "promote",
        "from_version": "3",
        "to_version": "4",
        "reason": "auc 0.91 > 0.88",
        "run_id": "flow-run-1",
        "actor": "ml-pipeline",
    }
    return AuditRecord(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("from_version", ["3", None])
def test_json_round_trip(from_version: str | None) -> None:
    record = _record(from_version=from_version, seq=7)
    text = record.to_json()
    assert " " not in text.replace("auc 0.91 > 0.88", "")  # compact separators
    assert AuditRecord.from_json(text) == record
    assert json.loads(text)["from_version"] == from_version


def test_unicode_reason_survives_round_trip() -> None:
    record = _record(reason="drift Δ=0.3 — rollback")
    assert AuditRecord.from_json(record.to_json()).reason == "drift Δ=0.3 — rollback"


def test_long_free_text_is_clipped_not_dropped() -> None:
    text = _record(reason="x" * 50_000, actor="a" * 5_000, run_id="r" * 5_000).to_json()
    parsed = AuditRecord.from_json(text)
    assert len(text) <= AUDIT_VALUE_MAX
    assert len(parsed.reason) == REASON_MAX
    assert parsed.reason.startswith("xxx")
    assert parsed.reason.endswith("[truncated]")
    assert len(parsed.actor) == FIELD_MAX
    assert len(parsed.run_id) == FIELD_MAX


def test_record_that_escapes_past_the_limit_is_refused() -> None:
    # Control characters escape to 6 characters each in JSON: 1000 of them overflow the limit.
    with pytest.raises(RegistryError, match="shorten its reason"):
        _record(reason="\x00" * REASON_MAX).to_json()


def test_corrupt_record_names_it() -> None:
    with pytest.raises(RegistryError, match="Corrupt audit record"):
        AuditRecord.from_json("{not json")


def test_audit_keys_sort_numerically_and_ignore_other_tags() -> None:
    tags = {
        audit_key(10): "",
        audit_key(2): "",
        "audit.1000000": "",  # past the zero padding: lexical order would put it first
        "audit.notes": "",
        "owner": "fraud-team",
    }
    assert audit_key(2) == "audit.000002"
    assert audit_seqs(tags) == [2, 10, 1_000_000]


def test_records_from_tags_are_ordered_and_numbered() -> None:
    tags = {
        audit_key(12): _record(to_version="5").to_json(),
        audit_key(3): _record(to_version="4").to_json(),
        "team": "fraud",
    }
    records = records_from_tags(tags)
    assert [(r.seq, r.to_version) for r in records] == [(3, "4"), (12, "5")]
    assert all(r.recorded for r in records)
    assert not _record().recorded


def _model(aliases: dict[str, str], *records: AuditRecord) -> RegisteredModel:
    """A registered model with these aliases and audit records (seq 1, 2, ...)."""
    tags = [RegisteredModelTag(audit_key(i), r.to_json()) for i, r in enumerate(records, 1)]
    return RegisteredModel(
        "fraud", tags=tags, aliases=[RegisteredModelAlias(k, v) for k, v in aliases.items()]
    )


FIRST = _record(action="promote", from_version=None, to_version="1")
SECOND = _record(action="promote", from_version="1", to_version="2")
BACK = _record(action="rollback", from_version="2", to_version="1")


@pytest.mark.parametrize(
    ("aliases", "records", "action", "version", "pending"),
    [
        # The server died after the record: aliases not moved, half moved, challenger left.
        ({"champion": "1"}, (FIRST, SECOND), "promote", "2", True),
        ({"champion": "2"}, (FIRST, SECOND), "promote", "2", True),
        ({"champion": "2", "previous-champion": "1", "challenger": "2"}, (FIRST, SECOND),
         "promote", "2", True),
        ({"champion": "2", "previous-champion": "1"}, (FIRST, BACK), "rollback", None, True),
        # Finished, another version, another action, or nothing recorded: nothing to complete.
        ({"champion": "2", "previous-champion": "1"}, (FIRST, SECOND), "promote", "2", False),
        ({"champion": "1"}, (FIRST, SECOND), "promote", "3", False),
        ({"champion": "1"}, (FIRST, BACK), "rollback", None, False),
        ({"champion": "1"}, (FIRST, SECOND), "rollback", None, False),
        ({"champion": "1"}, (), "promote", "1", False),
    ],
)  # fmt: skip
def test_unfinished_finds_a_record_whose_aliases_lag(
    aliases: dict[str, str],
    records: tuple[AuditRecord, ...],
    action: str,
    version: str | None,
    pending: bool,
) -> None:
    found = unfinished(_model(aliases, *records), action, version)
    assert (found is not None) == pending
    if found is not None:
        assert (found.seq, found.to_version) == (len(records), records[-1].to_version)


def _version(status: str = "READY", tags: dict[str, str] | None = None) -> ModelVersion:
    return ModelVersion(
        name="fraud",
        version="4",
        creation_timestamp=0,
        status=status,
        tags=[ModelVersionTag(key, value) for key, value in (tags or {}).items()],
    )


@pytest.mark.parametrize(
    ("version", "force", "expected"),
    [
        (_version(), False, []),
        (_version(tags={GATE_PASSED_TAG: "true"}), False, []),
        (
            _version(tags={GATE_PASSED_TAG: "false", GATE_REASONS_TAG: '["auc too low"]'}),
            False,
            ["auc too low"],
        ),
        (_version(tags={GATE_PASSED_TAG: "false"}), True, []),
        (_version("PENDING_REGISTRATION"), True, ["PENDING_REGISTRATION"]),
        (_version(tags={ROLLED_BACK_TAG: "true"}), False, ["rolled back"]),
    ],
)
def test_refusal_reasons(version: ModelVersion, force: bool, expected: list[str]) -> None:
    reasons = refusal_reasons(version, force=force)
    assert len(reasons) == len(expected)
    for reason, fragment in zip(reasons, expected, strict=True):
        assert fragment in reason


def test_file_lock_excludes_threads(tmp_path: Path) -> None:
    lock = file_lock(Settings(home=tmp_path))
    inside: list[int] = []
    overlaps: list[int] = []

    def hold() -> None:
        with lock("fraud"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert (tmp_path / "locks" / "promotion-fraud.lock").exists()


def test_file_lock_timeout_is_a_registry_error(tmp_path: Path) -> None:
    lock = file_lock(Settings(home=tmp_path), timeout_s=0.1)
    with lock("fraud"), pytest.raises(RegistryError, match="promotion lock"), lock("fraud"):
        pass
