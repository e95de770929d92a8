"""audit.record: the one function that writes the audit trail; checkpoint_create signs its head.

Call record() inside the transaction of the action it describes (for reads: before the bytes
leave). If it raises, the action must fail with it.
"""

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import signing, syslog
from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash, normalize_details
from audit.models import AuditCheckpoint, AuditEvent, AuditHead, Event, Outcome


class AuditUnavailable(RuntimeError):
    """The audit trail could not be written: the action it describes must fail with it
    (audit.middleware answers 503 and sends no data)."""


def record(
    event: Event | str,
    actor,
    outcome: Outcome | str = Outcome.SUCCESS,
    patient=None,
    study=None,
    purpose: str | None = None,
    basis: str | None = None,
    details: dict | None = None,
) -> AuditEvent:
    """Append one event to the hash chain (DICOM PS3.15 A.5 / IHE ATNA audit record).

    Three statements: claim the next seq on the head row, insert the event, store the new head
    hash. The head row stays locked until the caller's transaction ends, so the audit row commits
    or rolls back with the action and concurrent writers queue behind it instead of forking.
    """
    if event not in Event.values:
        raise ValueError(f"unknown audit event {event!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    user = actor if getattr(actor, "is_authenticated", False) else None
    profile = getattr(user, "profile", None) if user is not None else None
    if patient is None and study is not None:
        patient = study.patient
    row = AuditEvent(
        event=event,
        outcome=outcome,
        actor=user,
        actor_name=user.get_username() if user else "",
        actor_role=profile.role if profile else "",
        actor_hospital=profile.hospital if profile else None,
        patient=patient,
        study=study,
        purpose=purpose or "",
        basis=basis or "",
        details=normalize_details(details),
    )
    # No savepoint: a failed audit write dooms the enclosing transaction, as the action must fail.
    try:
        with transaction.atomic(savepoint=False):
            row.seq, row.prev_hash = _claim_next_seq()
            row.timestamp = timezone.now()
            # CHAIN_FIELDS are values() names, which are also the instance's attribute names.
            row.hash = event_hash({name: getattr(row, name) for name in CHAIN_FIELDS})
            row.save(force_insert=True)
            AuditHead.objects.filter(pk=AuditHead.ROW_ID).update(hash=row.hash)
            # After commit only, and a no-op unless AUDIT_SYSLOG_ADDRESS is set.
            syslog.forward(row)
    except DatabaseError as exc:
        raise AuditUnavailable("the audit trail could not be written") from exc
    return row


def _claim_next_seq() -> tuple[int, str]:
    """Advance the head by one and return (new seq, previous hash), holding the head's lock.

    The write comes first on purpose: on SQLite a transaction that reads before it writes can
    find its snapshot stale when it tries to write ("database is locked"), while one that starts
    with a write waits for the lock (busy timeout) and then sees the latest head. On PostgreSQL
    the UPDATE waits for the row lock and re-reads the committed row (READ COMMITTED).
    """
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    claim = f"UPDATE {table} SET seq = seq + 1 WHERE id = %s RETURNING seq, hash"
    with connection.cursor() as cursor:
        cursor.execute(claim, [AuditHead.ROW_ID])
        claimed = cursor.fetchone()
        if claimed is None:
            _create_head()
            cursor.execute(claim, [AuditHead.ROW_ID])
            claimed = cursor.fetchone()
    return claimed[0], claimed[1]


def _create_head() -> None:
    """Recreate the head row from the last event (after a test flush, or on a fresh database).

    Concurrent creators race harmlessly: the first insert wins, the others are ignored, and no
    event can be written while the row is missing.
    """
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, hash = last if last else (0, GENESIS_HASH)
    AuditHead.objects.bulk_create([AuditHead(id=AuditHead.ROW_ID, seq=seq, hash=hash)], ignore_conflicts=True)


def checkpoint_create() -> AuditCheckpoint | None:
    """Sign the chain's current last event (seq, hash) with the Ed25519 audit key (RFC 8032).

    Returns None while the trail is empty. Reads only committed rows and takes no lock, so
    writers are never held up by signing.
    """
    key = signing.signing_key()
    last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    if last is None:
        return None
    seq, hash = last
    signed_at = timezone.now()
    signature = signing.sign(key, signing.checkpoint_message(seq, hash, signed_at))
    return AuditCheckpoint.objects.create(
        seq=seq, hash=hash, signed_at=signed_at, signature=signature, key_id=signing.key_id(key.public_key())
    )
