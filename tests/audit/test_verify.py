"""verify_audit finds the first altered, missing or re-signed event (audit/verify.py)."""

import json
from io import StringIO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import record
from audit.chain import CHAIN_FIELDS, event_hash
from audit.models import AuditEvent, Event
from audit.services import checkpoint_create
from audit.signing import load_public_key_pem, public_key_pem
from audit.verify import verify_chain
from tests.audit.conftest import append_only_triggers_disabled, raw_sql

pytestmark = pytest.mark.django_db


@pytest.fixture
def five_events():
    for n in range(1, 6):
        record(Event.QUERY, None, details={"n": n})


def rewrite_from(seq: int, details: dict) -> None:
    """The careful forger: change one event and recompute every hash after it."""
    with append_only_triggers_disabled():
        raw_sql("UPDATE audit_auditevent SET details = %s WHERE seq = %s", [json.dumps(details), seq])
        prev_hash = AuditEvent.objects.get(seq=seq - 1).hash
        for row in AuditEvent.objects.filter(seq__gte=seq).order_by("seq").values(*CHAIN_FIELDS, "id"):
            row["prev_hash"] = prev_hash
            prev_hash = event_hash(row)
            raw_sql("UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s", [row["prev_hash"], prev_hash, row["id"]])
        raw_sql("UPDATE audit_audithead SET hash = %s", [prev_hash])


def test_a_clean_chain_verifies(five_events):
    result = verify_chain()
    assert result.ok
    assert str(result) == "OK: 5 events, last seq 5, 0 checkpoints verified"


def test_an_empty_trail_verifies():
    assert str(verify_chain()) == "OK: 0 events, last seq 0, 0 checkpoints verified"


def test_an_altered_event_is_reported_at_its_seq(five_events):
    with append_only_triggers_disabled():
        raw_sql("UPDATE audit_auditevent SET details = %s WHERE seq = 3", ['{"n": 30}'])
    result = verify_chain()
    assert not result.ok
    assert (result.broken_seq, result.events) == (3, 2)
    assert str(result) == "BROKEN at seq 3: hash does not match the event's contents (event altered)"


def test_an_altered_event_with_its_hash_recomputed_breaks_the_next_link(five_events):
    with append_only_triggers_disabled():
        raw_sql("UPDATE audit_auditevent SET details = %s WHERE seq = 3", ['{"n": 30}'])
        row = AuditEvent.objects.filter(seq=3).values(*CHAIN_FIELDS).get()
        raw_sql("UPDATE audit_auditevent SET hash = %s WHERE seq = 3", [event_hash(row)])
    result = verify_chain()
    assert (result.ok, result.broken_seq) == (False, 4)
    assert "prev_hash does not match the hash of seq 3" in result.problem


def test_a_deleted_middle_event_is_reported_at_its_seq(five_events):
    with append_only_triggers_disabled():
        raw_sql("DELETE FROM audit_auditevent WHERE seq = 3")
    result = verify_chain()
    assert (result.ok, result.broken_seq) == (False, 3)
    assert str(result) == "BROKEN at seq 3: event missing (the next event present is seq 4)"


def test_a_deleted_last_event_is_reported_by_the_head(five_events):
    with append_only_triggers_disabled():
        raw_sql("DELETE FROM audit_auditevent WHERE seq = 5")
    result = verify_chain()
    assert (result.ok, result.broken_seq) == (False, 5)


def test_checkpoints_verify_with_the_exported_public_key(five_events, signing_key):
    # given: a checkpoint, and the public key as the regulator receives it
    checkpoint = checkpoint_create()
    out = StringIO()
    call_command("audit_public_key", stdout=out, stderr=StringIO())
    pem = out.getvalue()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    record(Event.QUERY, None)

    # when / then
    assert (checkpoint.seq, checkpoint.hash) == (5, AuditEvent.objects.get(seq=5).hash)
    result = verify_chain(public_keys=[load_public_key_pem(pem.encode())])
    assert str(result) == "OK: 6 events, last seq 6, 1 checkpoints verified"


def test_a_checkpoint_does_not_verify_with_another_key(five_events, signing_key):
    checkpoint_create()
    other = Ed25519PrivateKey.generate().public_key()
    result = verify_chain(public_keys=[other])
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "not among the public keys" in result.problem


def test_a_forged_checkpoint_signature_is_reported(five_events, signing_key):
    checkpoint = checkpoint_create()
    with append_only_triggers_disabled():
        raw_sql("UPDATE audit_auditcheckpoint SET signature = %s WHERE id = %s",
                [Ed25519PrivateKey.generate().sign(b"x").hex(), checkpoint.pk])
    result = verify_chain()
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "invalid signature" in result.problem


def test_a_rewritten_chain_contradicts_its_checkpoint(five_events, signing_key):
    # given: a checkpoint at seq 5, then a forger rewrites seq 2 and rehashes everything after
    checkpoint_create()
    rewrite_from(2, {"n": 20})

    result = verify_chain()

    # then: every link holds, but the signed hash at seq 5 does not
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "signed another hash" in result.problem


def test_a_truncated_trail_contradicts_its_checkpoint(five_events, signing_key):
    checkpoint_create()
    with append_only_triggers_disabled():
        raw_sql("DELETE FROM audit_auditevent WHERE seq >= 4")
        raw_sql("UPDATE audit_audithead SET seq = 3, hash = (SELECT hash FROM audit_auditevent WHERE seq = 3)")
    result = verify_chain()
    assert (result.ok, result.broken_seq) == (False, 5)
    assert "trail ends at seq 3" in result.problem


def test_verify_audit_command_ok(five_events, signing_key, tmp_path):
    checkpoint_create()
    key_file = tmp_path / "audit.pem"
    key_file.write_text(public_key_pem(signing_key.public_key()))
    out = StringIO()
    call_command("verify_audit", "--public-key", str(key_file), stdout=out)
    assert out.getvalue().strip() == "OK: 5 events, last seq 5, 1 checkpoints verified"


def test_verify_audit_command_fails_at_the_first_problem(five_events):
    with append_only_triggers_disabled():
        raw_sql("UPDATE audit_auditevent SET details = %s WHERE seq = 2", ['{}'])
        raw_sql("DELETE FROM audit_auditevent WHERE seq = 4")
    with pytest.raises(CommandError, match=r"^BROKEN at seq 2: hash does not match") as failure:
        call_command("verify_audit", stdout=StringIO())
    assert failure.value.returncode == 1


def test_verify_audit_command_with_the_wrong_key_fails(five_events, signing_key, tmp_path):
    checkpoint_create()
    key_file = tmp_path / "other.pem"
    key_file.write_text(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(CommandError, match="BROKEN at seq 5"):
        call_command("verify_audit", "--public-key", str(key_file), stdout=StringIO())


def test_verify_audit_without_any_key_cannot_check_checkpoints(five_events, signing_key, settings):
    checkpoint_create()
    settings.AUDIT_SIGNING_KEY = None
    settings.DEBUG = False
    with pytest.raises(CommandError, match="pass --public-key"):
        call_command("verify_audit", stdout=StringIO())
