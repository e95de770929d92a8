"""Parallel writers leave one unbroken chain: no fork, no gap."""

import threading
import time

import pytest
from django.db import OperationalError, connection, transaction

from audit import record
from audit.models import AuditEvent, Event
from audit.verify import verify_chain

WRITERS = 8
EVENTS_EACH = 50


def write_events(writer: int, errors: list) -> None:
    try:
        for n in range(EVENTS_EACH):
            _with_retry(lambda: _one_action(writer, n))
    except Exception as exc:  # reported by the test, not lost in the thread
        errors.append(exc)
    finally:
        connection.close()


def _one_action(writer: int, n: int) -> None:
    # Each event in its own transaction, like an action that audits itself.
    with transaction.atomic():
        record(Event.INSTANCES_STORED, None, details={"writer": writer, "n": n})


def _with_retry(action) -> None:
    """SQLite's shared-cache in-memory test database answers "database table is locked" at once
    instead of waiting (the busy timeout does not apply); a writer then retries its action, as an
    application would. PostgreSQL waits on the head row's lock and never needs this."""
    for _ in range(2000):
        try:
            return action()
        except OperationalError as exc:
            if connection.vendor != "sqlite" or "locked" not in str(exc):
                raise
            time.sleep(0.001)
    raise TimeoutError("SQLite stayed locked")


@pytest.mark.django_db(transaction=True)
def test_parallel_writers_leave_one_unbroken_chain():
    errors: list = []
    start = AuditEvent.objects.count()
    threads = [threading.Thread(target=write_events, args=(w, errors)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    total = start + WRITERS * EVENTS_EACH
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, total + 1))
    prev_hashes = list(AuditEvent.objects.values_list("prev_hash", flat=True))
    assert len(set(prev_hashes)) == total, "two events link to the same predecessor: the chain forked"
    assert str(verify_chain()) == f"OK: {total} events, last seq {total}, 0 checkpoints verified"
