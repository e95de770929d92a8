"""Sequencer mode (AUDIT_CHAIN_MODE=sequencer, PostgreSQL's default): record() inserts the event
in the action's transaction without touching the chain head; seal() chains committed events in
batches. docs/decisions/0012-audit-sequencer.md"""

import csv
import io
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import Client

from audit import record
from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash
from audit.models import AuditEvent, AuditHead, Event
from audit.services import checkpoint_create, seal
from audit.tasks import seal_task
from audit.verify import verify_chain
from tests.audit.conftest import raw_sql
from tests.audit.test_concurrency import EVENTS_EACH, WRITERS, _with_retry


@pytest.fixture
def sequencer(settings):
    settings.AUDIT_CHAIN_MODE = "sequencer"
    settings.AUDIT_SEAL_ON_COMMIT = True
    return settings


def chain_is_whole(total: int) -> None:
    rows = list(AuditEvent.objects.order_by("seq").values(*CHAIN_FIELDS, "hash"))
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    previous = GENESIS_HASH
    for row in rows:
        assert row["prev_hash"] == previous, f"fork or gap at seq {row['seq']}"
        assert event_hash(row) == row["hash"]
        previous = row["hash"]
    assert AuditHead.objects.values_list("seq", "hash").get() == (total, previous)


@pytest.mark.django_db
def test_record_inserts_unsealed_and_seal_chains_in_id_order(sequencer):
    events = [record(Event.QUERY, None, details={"n": n}) for n in range(3)]
    # Inside the test's transaction nothing has committed: the events wait, unchained.
    assert [(e.seq, e.prev_hash, e.hash) for e in events] == [(None, "", "")] * 3
    assert AuditEvent.objects.filter(seq__isnull=True).count() == 3

    assert seal() == 3
    assert seal() == 0  # idempotent: nothing left
    sealed = list(AuditEvent.objects.filter(pk__in=[e.pk for e in events]).order_by("id"))
    assert [e.seq for e in sealed] == [1, 2, 3]
    assert [e.details for e in sealed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    chain_is_whole(3)
    assert verify_chain().ok


@pytest.mark.django_db
def test_modes_can_be_mixed_and_the_chain_stays_one(sequencer):
    sequencer.AUDIT_CHAIN_MODE = "inline"
    record(Event.QUERY, None, details={"inline": 1})
    sequencer.AUDIT_CHAIN_MODE = "sequencer"
    record(Event.QUERY, None, details={"sequenced": 1})
    seal()
    sequencer.AUDIT_CHAIN_MODE = "inline"
    record(Event.QUERY, None, details={"inline": 2})
    chain_is_whole(3)


@pytest.mark.django_db
def test_database_allows_sealing_once_and_nothing_else(sequencer):
    event = record(Event.QUERY, None, details={"n": 1})

    def refused(sql, params):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            raw_sql(sql, params)

    good = ("a" * 64, "b" * 64)
    # An unsealed event's contents cannot be changed, not even together with sealing it.
    refused("UPDATE audit_auditevent SET details = %s WHERE id = %s", ['{"n": 2}', event.pk])
    refused("UPDATE audit_auditevent SET seq = 1, prev_hash = %s, hash = %s, outcome = '12' WHERE id = %s",
            [*good, event.pk])
    # Sealing needs both hashes.
    refused("UPDATE audit_auditevent SET seq = 1 WHERE id = %s", [event.pk])
    seal()
    sealed = AuditEvent.objects.get(pk=event.pk)
    # A sealed event cannot be sealed again ("re-chained") or unsealed.
    refused("UPDATE audit_auditevent SET seq = 7, prev_hash = %s, hash = %s WHERE id = %s", [*good, event.pk])
    refused("UPDATE audit_auditevent SET seq = NULL, prev_hash = '', hash = '' WHERE id = %s", [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).hash == sealed.hash
    if connection.vendor == "postgresql":
        record(Event.QUERY, None)
        refused("DELETE FROM audit_auditevent WHERE seq IS NULL", [])


@pytest.mark.django_db(transaction=True)
def test_commit_seals_at_once_and_a_rollback_leaves_no_trace(sequencer):
    with transaction.atomic():
        record(Event.QUERY, None, details={"kept": True})
        record(Event.QUERY, None, details={"kept": True})
    assert list(AuditEvent.objects.values_list("seq", flat=True)) == [1, 2]  # sealed by the on-commit hook

    with pytest.raises(RuntimeError), transaction.atomic():
        record(Event.QUERY, None, details={"kept": False})
        raise RuntimeError("the action failed")
    record(Event.QUERY, None, details={"kept": True})  # autocommit: sealed at once too
    assert list(AuditEvent.objects.values_list("seq", "details")) == [(1, {"kept": True}), (2, {"kept": True}),
                                                                      (3, {"kept": True})]
    chain_is_whole(3)


def write_events(writer: int, errors: list) -> None:
    try:
        for n in range(EVENTS_EACH):
            def action():
                with transaction.atomic():
                    record(Event.INSTANCES_STORED, None, details={"writer": writer, "n": n})
            _with_retry(action)
    except Exception as exc:  # reported by the test, not lost in the thread
        errors.append(exc)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_parallel_writers_and_sealers_leave_one_unbroken_chain(sequencer):
    errors: list = []
    stop = threading.Event()

    def background_sealer():
        try:
            while not stop.is_set():
                _with_retry(lambda: seal(wait=True, batch=7))
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    # Writers seal on commit (try-lock) while a second sealer runs with small batches: they race.
    threads = [threading.Thread(target=write_events, args=(w, errors)) for w in range(WRITERS)]
    threads.append(threading.Thread(target=background_sealer))
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join()
    stop.set()
    threads[-1].join()
    _with_retry(seal)

    assert errors == []
    total = WRITERS * EVENTS_EACH
    chain_is_whole(total)
    assert sorted(AuditEvent.objects.values_list("details__writer", "details__n")) == sorted(
        (w, n) for w in range(WRITERS) for n in range(EVENTS_EACH))
    assert str(verify_chain()) == f"OK: {total} events, last seq {total}, 0 checkpoints verified"


@pytest.mark.django_db
def test_verify_reports_unsealed_events_and_a_late_sealer(sequencer):
    record(Event.QUERY, None)
    seal()
    record(Event.QUERY, None)
    result = verify_chain()
    assert (result.ok, result.events, result.unsealed) == (True, 1, 1)
    assert "1 newer events not sealed yet" in str(result)
    assert not result.sealer_late
    out = StringIO()
    call_command("audit_sealer", "--once", stdout=out)
    assert "sealed 1 events" in out.getvalue()
    assert verify_chain().unsealed == 0


@pytest.mark.django_db
def test_verify_audit_fails_when_events_wait_too_long(sequencer, monkeypatch):
    record(Event.QUERY, None)
    sequencer.AUDIT_SEAL_MAX_LAG = 1
    from django.utils import timezone
    later = timezone.now() + timedelta(seconds=30)
    monkeypatch.setattr("audit.verify.timezone.now", lambda: later)
    assert verify_chain().sealer_late
    with pytest.raises(CommandError, match="is the audit sealer running"):
        call_command("verify_audit", stdout=StringIO())


@pytest.mark.django_db
def test_checkpoint_and_beat_task_seal_first(sequencer, signing_key, celery_eager):
    record(Event.QUERY, None)
    record(Event.QUERY, None)
    assert seal_task.apply().get() == 2
    record(Event.QUERY, None)
    checkpoint = checkpoint_create()
    assert (checkpoint.seq, checkpoint.hash) == (3, AuditEvent.objects.get(seq=3).hash)
    assert seal_task.apply().get() == 0


@pytest.mark.django_db
def test_regulator_pages_and_exports_show_unsealed_events(sequencer, regulator):
    record(Event.QUERY, None, details={"first": True})
    seal()
    waiting = record(Event.EXPORT, None, details={"second": True})
    client = Client()
    client.force_login(regulator)
    page = client.get("/audit/events/").content.decode()
    assert f'data-seq="" data-id="{waiting.pk}"' in page and ">unsealed<" in page
    rows = list(csv.DictReader(io.StringIO(b"".join(client.get("/audit/events/", {"format": "csv"}).streaming_content)
                                           .decode())))
    # Chain order first; events not sealed yet (the export, the page views' own queries) last,
    # with no seq or hashes.
    seqs = [r["seq"] for r in rows]
    sealed = AuditEvent.objects.filter(seq__isnull=False).count()  # incl. the fixtures' own events
    assert seqs[:sealed] == [str(n) for n in range(1, sealed + 1)] and set(seqs[sealed:]) == {""}
    unsealed = rows[sealed:]
    assert Event.EXPORT in [r["event"] for r in unsealed]
    assert {(r["prev_hash"], r["hash"]) for r in unsealed} == {("", "")}
