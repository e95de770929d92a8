"""The hash chain that record() writes (audit/chain.py, audit/services.py)."""

import hashlib
import json
from datetime import UTC

import pytest
from django.db import transaction

from audit import record
from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash
from audit.models import AuditCheckpoint, AuditEvent, Event, Outcome
from audit.services import checkpoint_create

pytestmark = pytest.mark.django_db


def expected_hash(event: AuditEvent) -> str:
    """The canonical encoding as documented (ADR 0006), written out independently of audit.chain."""
    document = {
        "seq": event.seq,
        "timestamp": event.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event": event.event,
        "outcome": event.outcome,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "actor_role": event.actor_role,
        "actor_hospital_id": event.actor_hospital_id,
        "patient_id": event.patient_id,
        "study_id": event.study_id,
        "purpose": event.purpose,
        "basis": event.basis,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")
    return hashlib.sha256(encoded).hexdigest()


def test_events_link_into_a_chain_from_genesis(clinician_a):
    # given: the fixtures' own audited actions (hospital and account creation)
    before = AuditEvent.objects.count()

    # when
    record(Event.QUERY, clinician_a, details={"query": {"PatientID": "123"}})
    record(Event.ACCESS_DENIED, clinician_a, Outcome.MINOR_FAILURE, purpose="treatment", basis="none")
    record(Event.USER_AUTHENTICATION, None, details={"username": "Zhāng 张", "n": 1.5})

    # then: read back from the database, as verify_audit sees them
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == list(range(1, before + 4))
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    for event in events:
        assert len(event.hash) == 64
        assert event.hash == expected_hash(event)
    query = events[before]
    assert (query.event, query.actor_id, query.actor_name, query.actor_role, query.actor_hospital_id) == (
        Event.QUERY, clinician_a.pk, "dr_a", "clinician", clinician_a.profile.hospital_id
    )
    assert events[-1].details == {"username": "Zhāng 张", "n": 1.5}


def test_the_hash_covers_every_field():
    event = record(Event.QUERY, None, details={"a": 1})
    fields = {name: getattr(event, name) for name in CHAIN_FIELDS}
    assert event_hash(fields) == event.hash
    changed = {"seq": 2, "event": "export", "outcome": "4", "actor_id": 7, "actor_name": "x", "actor_role": "x",
               "actor_hospital_id": 7, "patient_id": 7, "study_id": 7, "purpose": "x", "basis": "x",
               "details": {"a": 2}, "prev_hash": "1" * 64, "timestamp": event.timestamp.replace(microsecond=1)}
    assert set(changed) == set(CHAIN_FIELDS)
    for name, value in changed.items():
        assert event_hash({**fields, name: value}) != event.hash, name


def test_details_are_hashed_as_stored():
    event = record(Event.QUERY, None, details={1: ("a", "b"), "nested": {"z": 1, "a": [None, True]}})
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.details == {"1": ["a", "b"], "nested": {"z": 1, "a": [None, True]}}
    assert stored.hash == expected_hash(stored)


def test_details_that_json_cannot_hold_are_refused_before_writing():
    with pytest.raises(ValueError):
        record(Event.QUERY, None, details={"x": float("nan")})
    assert not AuditEvent.objects.exists()


def test_a_rolled_back_action_leaves_no_gap():
    record(Event.QUERY, None)
    with pytest.raises(RuntimeError), transaction.atomic():
        record(Event.EXPORT, None)
        raise RuntimeError("the action failed")
    record(Event.QUERY, None)
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1, 2]


def test_record_costs_three_queries(django_assert_num_queries):
    record(Event.QUERY, None)
    with transaction.atomic(), django_assert_num_queries(3):
        record(Event.QUERY, None, details={"n": 1})


def test_orm_refuses_to_change_or_remove_events():
    event = record(Event.QUERY, None)
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(details={"forged": True})
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(outcome=Outcome.MAJOR_FAILURE)
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_update([event], ["details"])
    assert AuditEvent.objects.get(pk=event.pk).details == {}


def test_orm_refuses_events_that_bypass_record():
    with pytest.raises(PermissionError):
        AuditEvent.objects.create(event=Event.QUERY, outcome=Outcome.SUCCESS)
    with pytest.raises(PermissionError):
        AuditEvent.objects.bulk_create([AuditEvent(seq=1, hash="0" * 64, event=Event.QUERY, outcome="0")])
    assert not AuditEvent.objects.exists()


def test_orm_refuses_to_change_or_remove_checkpoints(signing_key):
    record(Event.QUERY, None)
    checkpoint = checkpoint_create()
    with pytest.raises(PermissionError):
        AuditCheckpoint.objects.update(seq=99)
    with pytest.raises(PermissionError):
        AuditCheckpoint.objects.all().delete()
    with pytest.raises(PermissionError):
        checkpoint.save()
    with pytest.raises(PermissionError):
        checkpoint.delete()
