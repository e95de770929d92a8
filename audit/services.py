"""audit.record: the one function that writes the audit trail; seal chains it (sequencer mode);
checkpoint_create signs its head.

Call record() inside the transaction of the action it describes (for reads: before the bytes
leave). If it raises, the action must fail with it.
"""

import logging

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit import signing, syslog
from audit.chain import CHAIN_FIELDS, GENESIS_HASH, event_hash, normalize_details
from audit.models import AuditCheckpoint, AuditEvent, AuditHead, Event, Outcome

logger = logging.getLogger(__name__)


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
    """Append one event to the trail (DICOM PS3.15 A.5 / IHE ATNA audit record).

    The row is inserted in the caller's transaction, so it commits or rolls back with the action.
    It is linked into the hash chain either here (AUDIT_CHAIN_MODE=inline: claim the next seq on
    the head row, whose lock then stays held until the caller's transaction ends, so concurrent
    writers queue instead of forking) or by seal() once the action has committed (sequencer mode:
    no lock is taken here; writers never wait for each other). docs/decisions/0012-audit-sequencer.md
    """
    if event not in Event.values:
        raise ValueError(f"unknown audit event {event!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    user = actor if getattr(actor, "is_authenticated", False) else None
    profile = getattr(user, "profile", None) if user is not None else None
    # Foreign keys by id: no lazy load of the study's patient or the profile's hospital per event.
    row = AuditEvent(
        event=event,
        outcome=outcome,
        actor=user,
        actor_name=user.get_username() if user else "",
        actor_role=profile.role if profile else "",
        actor_hospital_id=profile.hospital_id if profile else None,
        patient_id=patient.pk if patient is not None else (study.patient_id if study is not None else None),
        study_id=study.pk if study is not None else None,
        purpose=purpose or "",
        basis=basis or "",
        details=normalize_details(details),
    )
    row._from_record = True
    inline = settings.AUDIT_CHAIN_MODE == "inline"
    # No savepoint: a failed audit write dooms the enclosing transaction, as the action must fail.
    try:
        with transaction.atomic(savepoint=False):
            if inline:
                row.seq, row.prev_hash = _claim_next_seq()
                row.timestamp = timezone.now()
                # CHAIN_FIELDS are values() names, which are also the instance's attribute names.
                row.hash = event_hash({name: getattr(row, name) for name in CHAIN_FIELDS})
                row.save(force_insert=True)
                AuditHead.objects.filter(pk=AuditHead.ROW_ID).update(hash=row.hash)
                # After commit only, and a no-op unless AUDIT_SYSLOG_ADDRESS is set.
                syslog.forward(row)
            else:
                row.timestamp = timezone.now()
                row.save(force_insert=True)
                if settings.AUDIT_SEAL_ON_COMMIT:
                    _seal_after_commit()
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
    """Recreate the head row from the last sealed event (after a test flush, or on a fresh database).

    Concurrent creators race harmlessly: the first insert wins, the others are ignored, and no
    event can be chained while the row is missing.
    """
    last = AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
    seq, hash = last if last else (0, GENESIS_HASH)
    AuditHead.objects.bulk_create([AuditHead(id=AuditHead.ROW_ID, seq=seq, hash=hash)], ignore_conflicts=True)


# --- sequencer mode: sealing committed events into the chain ---------------------------------

SEAL_BATCH = 1000
_UNSEALED_FIELDS = tuple(name for name in CHAIN_FIELDS if name not in ("seq", "prev_hash"))


def _seal_soon() -> None:
    """on_commit hook of record() in sequencer mode: seal now unless another process is sealing.

    The action and its event are committed by now; a failure here only delays sealing until the
    next call or the beat backstop (audit.tasks.seal_task), so it is logged, never raised.
    """
    try:
        seal(wait=False)
    except DatabaseError as exc:
        logger.warning("audit: sealing deferred to the next sealer run (%s)", exc.__class__.__name__)


def _seal_after_commit() -> None:
    # Once per transaction, however many events it writes.
    if not any(entry[1] is _seal_soon for entry in connection.run_on_commit):
        transaction.on_commit(_seal_soon, robust=True)


def seal(*, wait: bool = True, batch: int = SEAL_BATCH) -> int:
    """Chain every committed unsealed event, in id order, in batches; return how many were sealed.

    Each batch is one transaction under the head row's lock: read the head, give the next events
    consecutive seqs, each linked to the previous hash (audit/chain.py), store the new head. With
    ``wait=False`` it returns at once (0) when another process holds the head (it is sealing, or
    an inline writer is mid-transaction); the beat task then catches anything left.
    """
    total = 0
    while True:
        sealed = _seal_batch(wait=wait, batch=batch)
        if sealed is None:
            return total
        total += sealed
        if sealed < batch:
            return total


def _lock_head(wait: bool):
    """(seq, hash) of the head, locked until the transaction ends; None if busy and not waiting."""
    table = connection.ops.quote_name(AuditHead._meta.db_table)
    with connection.cursor() as cursor:
        for _ in range(2):
            if connection.vendor == "postgresql":
                cursor.execute(f"SELECT seq, hash FROM {table} WHERE id = %s FOR UPDATE{'' if wait else ' SKIP LOCKED'}",
                               [AuditHead.ROW_ID])
            else:
                # SQLite: a write first takes the database lock (see _claim_next_seq).
                cursor.execute(f"UPDATE {table} SET seq = seq WHERE id = %s RETURNING seq, hash", [AuditHead.ROW_ID])
            head = cursor.fetchone()
            if head is not None:
                return head
            if AuditHead.objects.filter(pk=AuditHead.ROW_ID).exists():
                return None  # locked by someone else (SKIP LOCKED)
            _create_head()
    raise DatabaseError("audit chain head could not be created")


def _seal_batch(*, wait: bool, batch: int) -> int | None:
    sealed_ids: list[int] = []
    with transaction.atomic():
        head = _lock_head(wait)
        if head is None:
            return None
        seq, prev = head
        rows = list(AuditEvent.objects.filter(seq__isnull=True).order_by("id").values("id", *_UNSEALED_FIELDS)[:batch])
        if not rows:
            return 0
        params = []
        for row in rows:
            seq += 1
            row["seq"], row["prev_hash"] = seq, prev
            prev = event_hash(row)
            params.append((seq, row["prev_hash"], prev, row["id"]))
            sealed_ids.append(row["id"])
        table = connection.ops.quote_name(AuditEvent._meta.db_table)
        head_table = connection.ops.quote_name(AuditHead._meta.db_table)
        with connection.cursor() as cursor:
            # "AND seq IS NULL": the database trigger allows exactly this one change, once.
            cursor.executemany(f"UPDATE {table} SET seq = %s, prev_hash = %s, hash = %s WHERE id = %s AND seq IS NULL",
                               params)
            cursor.execute(f"UPDATE {head_table} SET seq = %s, hash = %s WHERE id = %s", [seq, prev, AuditHead.ROW_ID])
        if settings.AUDIT_SYSLOG_ADDRESS:
            transaction.on_commit(lambda: _forward_sealed(sealed_ids), robust=True)
    return len(rows)


def _forward_sealed(ids: list[int]) -> None:
    for event in AuditEvent.objects.filter(id__in=ids).select_related("actor_hospital", "patient", "study").order_by("seq"):
        syslog.send(event)


def unsealed_summary() -> tuple[int, object]:
    """(number of events not chained yet, timestamp of the oldest), for verify_audit and the bench."""
    qs = AuditEvent.objects.filter(seq__isnull=True)
    oldest = qs.order_by("id").values_list("timestamp", flat=True).first()
    return qs.count(), oldest


def checkpoint_create() -> AuditCheckpoint | None:
    """Sign the chain's current last event (seq, hash) with the Ed25519 audit key (RFC 8032).

    Returns None while the trail is empty. Reads only committed rows and takes no lock, so
    writers are never held up by signing.
    """
    key = signing.signing_key()
    if settings.AUDIT_CHAIN_MODE == "sequencer":
        seal(wait=True)
    last = AuditEvent.objects.filter(seq__isnull=False).order_by("-seq").values_list("seq", "hash").first()
    if last is None:
        return None
    seq, hash = last
    signed_at = timezone.now()
    signature = signing.sign(key, signing.checkpoint_message(seq, hash, signed_at))
    return AuditCheckpoint.objects.create(
        seq=seq, hash=hash, signed_at=signed_at, signature=signature, key_id=signing.key_id(key.public_key())
    )
