"""The database itself refuses to change the trail (triggers of migration 0005)."""

import pytest
from django.db import DatabaseError, connection, transaction

from audit import record
from audit.models import AuditEvent, Event
from audit.services import checkpoint_create
from tests.audit.conftest import raw_sql
from tests.conftest import require

pytestmark = pytest.mark.django_db


def refused(sql: str, params=()):
    # A savepoint, so the test's transaction survives the refusal on PostgreSQL.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        raw_sql(sql, params)


def test_database_refuses_update_of_an_event():
    event = record(Event.QUERY, None, details={"n": 1})
    refused("UPDATE audit_auditevent SET details = %s WHERE id = %s", ['{"n": 2}', event.pk])
    refused("UPDATE audit_auditevent SET outcome = '12'")
    assert AuditEvent.objects.get(pk=event.pk).details == {"n": 1}


def test_database_refuses_update_of_a_checkpoint(signing_key):
    record(Event.QUERY, None)
    checkpoint = checkpoint_create()
    refused("UPDATE audit_auditcheckpoint SET seq = 99 WHERE id = %s", [checkpoint.pk])


def test_postgresql_refuses_delete_of_events_and_checkpoints(signing_key):
    # SQLite keeps DELETE possible for Django's test flush; verify_audit reports it (test_verify).
    require("PostgreSQL", connection.vendor == "postgresql", "the DELETE trigger is PostgreSQL's")
    event = record(Event.QUERY, None)
    checkpoint_create()
    refused("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    refused("DELETE FROM audit_auditevent")
    refused("DELETE FROM audit_auditcheckpoint")
    assert AuditEvent.objects.filter(pk=event.pk).exists()
