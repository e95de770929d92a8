"""Signed checkpoints: the key, the service, the beat task (audit/signing.py, audit/tasks.py)."""

from io import StringIO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from audit import record
from audit.apps import signing_key_check
from audit.models import AuditCheckpoint, AuditEvent, Event
from audit.services import checkpoint_create
from audit.signing import checkpoint_message, key_id, signature_valid, signing_key
from audit.tasks import checkpoint_task
from audit.verify import verify_chain

pytestmark = pytest.mark.django_db


def test_a_checkpoint_signs_the_last_event(signing_key):
    record(Event.QUERY, None)
    last = record(Event.QUERY, None)

    checkpoint = checkpoint_create()

    assert (checkpoint.seq, checkpoint.hash) == (last.seq, last.hash)
    assert checkpoint.key_id == key_id(signing_key.public_key())
    message = checkpoint_message(checkpoint.seq, checkpoint.hash, checkpoint.signed_at)
    assert signature_valid(signing_key.public_key(), message, checkpoint.signature)
    assert not signature_valid(Ed25519PrivateKey.generate().public_key(), message, checkpoint.signature)
    stored = AuditCheckpoint.objects.get(pk=checkpoint.pk)
    assert signature_valid(signing_key.public_key(), checkpoint_message(stored.seq, stored.hash, stored.signed_at),
                           stored.signature)


def test_an_empty_trail_has_nothing_to_sign(signing_key):
    assert not AuditEvent.objects.exists()
    assert checkpoint_create() is None


def test_the_beat_task_makes_a_checkpoint(signing_key):
    last = record(Event.QUERY, None)
    assert checkpoint_task.apply().get() == last.seq
    assert AuditCheckpoint.objects.filter(seq=last.seq).count() == 1
    assert verify_chain().checkpoints == 1


def test_the_task_is_scheduled_hourly_by_default():
    entry = django_settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry["task"] == checkpoint_task.name == "audit.tasks.checkpoint_task"
    assert entry["schedule"] == 3600.0
    assert checkpoint_task.acks_late


def test_a_pem_key_is_accepted(settings):
    key = Ed25519PrivateKey.generate()
    settings.AUDIT_SIGNING_KEY = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    assert key_id(signing_key().public_key()) == key_id(key.public_key())
    out = StringIO()
    call_command("audit_public_key", stdout=out, stderr=StringIO())
    assert out.getvalue() == key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


# A PEM frame around garbage (built up so no private-key marker stands in the repository).
PEM_GARBAGE = "-----BEGIN " + "PRIVATE KEY-----\nxx\n-----END " + "PRIVATE KEY-----"


@pytest.mark.parametrize("value", ["not a key", "c2hvcnQ=", PEM_GARBAGE])
def test_a_malformed_key_fails_the_system_check(settings, value):
    settings.AUDIT_SIGNING_KEY = value
    with pytest.raises(ImproperlyConfigured):
        signing_key()
    assert [error.id for error in signing_key_check(None)] == ["audit.E001"]


def test_no_key_outside_debug_refuses_to_sign(settings):
    settings.AUDIT_SIGNING_KEY = None
    settings.DEBUG = False
    record(Event.QUERY, None)
    with pytest.raises(ImproperlyConfigured, match="AUDIT_SIGNING_KEY"):
        checkpoint_create()


def test_debug_without_a_key_uses_a_development_key_from_secret_key(settings):
    settings.AUDIT_SIGNING_KEY = None
    settings.DEBUG = True
    first = key_id(signing_key().public_key())
    assert key_id(signing_key().public_key()) == first
    settings.SECRET_KEY = "another-secret-key-for-this-test"
    assert key_id(signing_key().public_key()) != first
