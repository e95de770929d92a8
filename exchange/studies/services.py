"""Ingest: from a spooled Part 10 file to a stored, indexed, audited instance.

Each instance is its own transaction (a STOW-RS request may partly succeed, PS3.18 §10.5).
The file is moved to its content address first; if the index transaction fails, a file this
call created is removed again, so a refused or failed instance leaves nothing behind.
"""

import logging
from dataclasses import dataclass
from enum import Enum

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit import record
from audit.models import Event, Outcome
from exchange.mpi.services import Demographics, IdentityConflict, identifier_resolve
from exchange.studies import storage
from exchange.studies.dicomfile import FailureReason, Parsed, Rejected, parse
from exchange.studies.models import BatchStatus, IngestBatch, Instance, Series, Study
from exchange.studies.names import search_key

log = logging.getLogger(__name__)


class Status(str, Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass
class IngestResult:
    status: Status
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    reason: FailureReason | None = None
    message: str = ""
    instance: Instance | None = None


def batch_start(*, hospital, actor, source: str, label: str = "") -> IngestBatch:
    return IngestBatch.objects.create(
        hospital=hospital, actor=actor if getattr(actor, "is_authenticated", False) else None, source=source, label=label[:200]
    )


def batch_count(batch: IngestBatch, result: IngestResult, item: str = "") -> None:
    """Add one result to the batch's counters (kept in memory; batch_finish saves them)."""
    batch.received += 1
    if result.status is Status.STORED:
        batch.stored += 1
        batch.bytes_stored += result.instance.size if result.instance else 0
    elif result.status is Status.DUPLICATE:
        batch.duplicates += 1
    else:
        batch.rejected += 1
        if len(batch.errors) < 1000:
            batch.errors.append({"item": item[:200], "code": f"0x{int(result.reason):04X}", "reason": result.message})


def batch_finish(batch: IngestBatch, *, failed: bool = False) -> None:
    batch.status = BatchStatus.FAILED if failed else BatchStatus.DONE
    batch.finished_at = timezone.now()
    batch.save()


def _study_defaults(p: Parsed, identifier) -> dict:
    return {
        "patient": identifier.patient,
        "identifier": identifier,
        **p.study,
        "dicom_patient_id": p.patient_id,
        "issuer_of_patient_id": p.issuer_of_patient_id,
        "patient_name_alphabetic": p.name_alphabetic,
        "patient_name_ideographic": p.name_ideographic,
        "patient_name_phonetic": p.name_phonetic,
        "patient_birth_date": p.birth_date,
        "patient_sex": p.sex,
        "name_search": search_key(p.name_alphabetic, p.name_ideographic, p.name_phonetic),
    }


def _index(p: Parsed, spool: storage.Spool, *, hospital, actor, batch, source) -> IngestResult:
    identifier = identifier_resolve(
        hospital=hospital,
        demographics=Demographics(
            local_id=p.patient_id,
            issuer=p.issuer_of_patient_id,
            name_alphabetic=p.name_alphabetic,
            name_ideographic=p.name_ideographic,
            name_phonetic=p.name_phonetic,
            birth_date=p.birth_date,
            sex=p.sex,
            ric=p.ric,
        ),
    )
    study, _ = Study.objects.get_or_create(
        hospital=hospital, study_instance_uid=p.study_instance_uid, defaults=_study_defaults(p, identifier)
    )
    study = Study.objects.select_for_update().get(pk=study.pk)
    if study.patient_id != identifier.patient_id:
        raise Rejected(
            FailureReason.DATASET_DOES_NOT_MATCH,
            "StudyInstanceUID is already registered at this hospital for a different patient",
            p.sop_class_uid,
            p.sop_instance_uid,
        )
    existing = (
        Instance.objects.filter(series__study__hospital=hospital, sop_instance_uid=p.sop_instance_uid)
        .select_related("series__study")
        .first()
    )
    if existing is not None:
        same_place = existing.series.series_instance_uid == p.series_instance_uid and existing.series.study_id == study.pk
        if same_place and existing.storage_key == spool.key:
            return IngestResult(Status.DUPLICATE, instance=existing)
        raise Rejected(
            FailureReason.DUPLICATE_SOP_INSTANCE,
            "an instance with this SOPInstanceUID is already stored with different content"
            if same_place
            else "an instance with this SOPInstanceUID is already stored in another series or study",
            p.sop_class_uid,
            p.sop_instance_uid,
        )
    series, series_created = Series.objects.get_or_create(
        study=study, series_instance_uid=p.series_instance_uid, defaults=p.series
    )
    instance = Instance.objects.create(
        series=series,
        sop_instance_uid=p.sop_instance_uid,
        sop_class_uid=p.sop_class_uid,
        transfer_syntax_uid=p.transfer_syntax_uid,
        storage_key=spool.key,
        size=spool.size,
        **p.instance,
    )
    Series.objects.filter(pk=series.pk).update(num_instances=F("num_instances") + 1, total_bytes=F("total_bytes") + spool.size)
    modalities = set(filter(None, study.modalities.split("\\")))
    if p.series.get("modality"):
        modalities.add(p.series["modality"])
    Study.objects.filter(pk=study.pk).update(
        num_instances=F("num_instances") + 1,
        num_series=F("num_series") + (1 if series_created else 0),
        total_bytes=F("total_bytes") + spool.size,
        modalities="\\".join(sorted(modalities))[:100],
        updated_at=timezone.now(),
    )
    record(
        Event.INSTANCES_STORED,
        actor,
        Outcome.SUCCESS,
        study=study,
        details={"source": source, "batch": batch.pk if batch else None, "sop_instance_uid": p.sop_instance_uid},
    )
    return IngestResult(Status.STORED, instance=instance)


def ingest_spool(
    spool: storage.Spool, *, hospital, actor, source: str, batch: IngestBatch | None = None, expected_study_uid: str | None = None
) -> IngestResult:
    """Validate, store and index one spooled file. Never raises for bad input: the result says
    why it was refused. The spool is consumed (moved into storage or deleted)."""
    try:
        parsed = parse(str(spool.path))
        if expected_study_uid and parsed.study_instance_uid != expected_study_uid:
            raise Rejected(
                FailureReason.DATASET_DOES_NOT_MATCH,
                "StudyInstanceUID does not match the study in the request URL",
                parsed.sop_class_uid,
                parsed.sop_instance_uid,
            )
    except Rejected as exc:
        spool.discard()
        return IngestResult(Status.REJECTED, exc.sop_class_uid, exc.sop_instance_uid, reason=exc.reason, message=exc.message)

    ids = dict(
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
    )
    created = storage.commit(spool)
    try:
        with transaction.atomic():
            result = _index(parsed, spool, hospital=hospital, actor=actor, batch=batch, source=source)
    except (Rejected, IdentityConflict) as exc:
        if created:
            storage.remove(spool.key)
        reason = getattr(exc, "reason", FailureReason.DATASET_DOES_NOT_MATCH)
        return IngestResult(Status.REJECTED, reason=reason, message=getattr(exc, "message", str(exc)), **ids)
    except Exception as exc:
        if created:
            storage.remove(spool.key)
        # Only the exception's type: database errors can quote key values (patient ids).
        log.error("ingest failed while indexing (batch %s): %s", batch.pk if batch else None, type(exc).__name__)
        return IngestResult(Status.REJECTED, reason=FailureReason.PROCESSING_FAILURE, message="processing failure", **ids)
    result.__dict__.update(ids)
    return result
