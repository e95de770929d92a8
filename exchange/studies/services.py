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
from exchange.mpi.identity import RIC_ISSUERS
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


def _demographics(p: Parsed) -> Demographics:
    return Demographics(
        local_id=p.patient_id,
        issuer=p.issuer_of_patient_id,
        name_alphabetic=p.name_alphabetic,
        name_ideographic=p.name_ideographic,
        name_phonetic=p.name_phonetic,
        birth_date=p.birth_date,
        sex=p.sex,
        # An invalid number is passed on so the index flags it (it is never trusted).
        ric=p.ric or p.ric_raw or None,
        phone=p.phone or None,
        other_ids=tuple((issuer, value) for issuer, value in p.other_ids if issuer.upper() not in RIC_ISSUERS),
    )


def _rejected(exc, p: Parsed | None = None) -> IngestResult:
    ids = _ids(p) if p else {}
    return IngestResult(Status.REJECTED, reason=getattr(exc, "reason", FailureReason.DATASET_DOES_NOT_MATCH),
                        message=getattr(exc, "message", str(exc)), **ids)


def _ids(p: Parsed) -> dict:
    return dict(sop_class_uid=p.sop_class_uid, sop_instance_uid=p.sop_instance_uid,
                study_instance_uid=p.study_instance_uid, series_instance_uid=p.series_instance_uid)


def _tally(per_study: dict, study: Study) -> dict:
    return per_study.setdefault(study.pk, {"study": study, "n": 0, "bytes": 0, "series": 0, "modalities": set(), "uids": []})


@dataclass
class _Pending:
    parsed: Parsed
    spool: storage.Spool
    created: bool
    slot: int


class IngestSession:
    """Ingest many instances (one STOW-RS request, one medium) with few queries per instance.

    Files are validated and moved to storage as they arrive; the index is written in chunks of
    ``chunk_size`` instances, one transaction per chunk: patient, study and series are resolved
    (and the study row locked) once per chunk, instances are inserted together, counters updated
    once per study, and one audit event per study lists the instances stored — in the same
    transaction. A chunk that fails as a whole is reported as a processing failure for each of
    its instances and the files it created are removed, so nothing is left half-written.
    """

    def __init__(self, *, hospital, actor, source: str, batch: IngestBatch | None = None,
                 expected_study_uid: str | None = None, chunk_size: int = 50, audit_details: dict | None = None):
        self.hospital, self.actor, self.source, self.batch = hospital, actor, source, batch
        # Added to each INSTANCES_STORED event (e.g. the calling AE title of a C-STORE); never patient data.
        self.audit_details = audit_details or {}
        self.expected_study_uid = expected_study_uid
        self.chunk_size = chunk_size
        self.results: list[IngestResult | None] = []
        self._pending: list[_Pending] = []

    def add(self, spool: storage.Spool) -> None:
        """Take one spooled file (consumed: moved into storage or deleted)."""
        slot = len(self.results)
        self.results.append(None)
        try:
            parsed = parse(str(spool.path))
            if self.expected_study_uid and parsed.study_instance_uid != self.expected_study_uid:
                raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH,
                               "StudyInstanceUID does not match the study in the request URL",
                               parsed.sop_class_uid, parsed.sop_instance_uid)
        except Rejected as exc:
            spool.discard()
            self.results[slot] = IngestResult(Status.REJECTED, exc.sop_class_uid, exc.sop_instance_uid,
                                              reason=exc.reason, message=exc.message)
            return
        self._pending.append(_Pending(parsed, spool, storage.commit(spool), slot))
        if len(self._pending) >= self.chunk_size:
            self.flush()

    def finish(self) -> list[IngestResult]:
        self.flush()
        return [r for r in self.results if r is not None]

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            with transaction.atomic():
                outcomes = self._index_chunk(pending)
        except Exception as exc:
            # Only the exception's type: database errors can quote key values (patient ids).
            log.error("ingest failed while indexing (batch %s): %s", self.batch.pk if self.batch else None,
                      type(exc).__name__)
            outcomes = [IngestResult(Status.REJECTED, reason=FailureReason.PROCESSING_FAILURE,
                                     message="processing failure", **_ids(p.parsed)) for p in pending]
        kept = {p.spool.key for p, r in zip(pending, outcomes) if r.status is not Status.REJECTED}
        for p, result in zip(pending, outcomes):
            if result.status is Status.REJECTED and p.created and p.spool.key not in kept:
                storage.remove(p.spool.key)
            self.results[p.slot] = result

    def _study_for(self, p: Parsed) -> Study:
        # A savepoint: an identity or study that is refused leaves no rows behind.
        with transaction.atomic():
            identifier = identifier_resolve(hospital=self.hospital, demographics=_demographics(p), actor=self.actor)
            study, _ = Study.objects.get_or_create(
                hospital=self.hospital, study_instance_uid=p.study_instance_uid, defaults=_study_defaults(p, identifier)
            )
            study = Study.objects.select_for_update().select_related("patient").get(pk=study.pk)
            if study.patient_id != identifier.patient_id:
                raise Rejected(FailureReason.DATASET_DOES_NOT_MATCH,
                               "StudyInstanceUID is already registered at this hospital for a different patient",
                               p.sop_class_uid, p.sop_instance_uid)
        return study

    def _index_chunk(self, pending: list[_Pending]) -> list[IngestResult]:
        outcomes: list[IngestResult | None] = [None] * len(pending)
        studies: dict[tuple, Study | Exception] = {}
        for n, item in enumerate(pending):
            p = item.parsed
            key = (p.patient_id, p.ric, p.study_instance_uid)
            if key not in studies:
                try:
                    studies[key] = self._study_for(p)
                except (Rejected, IdentityConflict) as exc:
                    studies[key] = exc
            if isinstance(studies[key], Exception):
                outcomes[n] = _rejected(studies[key], p)
        # Read existing instances only now that the studies are locked: a concurrent request
        # for the same study has committed or waits for us.
        existing = {
            i.sop_instance_uid: i
            for i in Instance.objects.filter(
                series__study__hospital=self.hospital, sop_instance_uid__in=[i.parsed.sop_instance_uid for i in pending]
            ).select_related("series")
        }
        series_cache: dict[tuple, Series] = {}
        new: list[Instance] = []
        per_study: dict[int, dict] = {}
        per_series: dict[int, list[int]] = {}
        for n, item in enumerate(pending):
            if outcomes[n] is not None:
                continue
            p, spool = item.parsed, item.spool
            study = studies[(p.patient_id, p.ric, p.study_instance_uid)]
            found = existing.get(p.sop_instance_uid)
            if found is not None:
                same_place = found.series.series_instance_uid == p.series_instance_uid and found.series.study_id == study.pk
                if same_place and not found.storage_key:
                    # Indexed from the hospital's archive by sync, its pixels now pushed (C-STORE,
                    # a C-MOVE to the platform, STOW): the row gets its file and is served locally.
                    Instance.objects.filter(pk=found.pk, storage_key="").update(
                        storage_key=spool.key, size=spool.size, transfer_syntax_uid=p.transfer_syntax_uid,
                        sop_class_uid=p.sop_class_uid, **p.instance)
                    found.storage_key = spool.key
                    acc = _tally(per_study, study)
                    acc["bytes"] += spool.size
                    acc["uids"].append(p.sop_instance_uid)
                    acc["adopted"] = acc.get("adopted", 0) + 1
                    counts = per_series.setdefault(found.series_id, [0, 0])
                    counts[1] += spool.size
                    outcomes[n] = IngestResult(Status.STORED, instance=found, **_ids(p))
                elif same_place and found.storage_key == spool.key:
                    outcomes[n] = IngestResult(Status.DUPLICATE, instance=found, **_ids(p))
                else:
                    outcomes[n] = _rejected(Rejected(
                        FailureReason.DUPLICATE_SOP_INSTANCE,
                        "an instance with this SOPInstanceUID is already stored with different content" if same_place
                        else "an instance with this SOPInstanceUID is already stored in another series or study"), p)
                continue
            skey = (study.pk, p.series_instance_uid)
            if skey not in series_cache:
                series, created = Series.objects.get_or_create(study=study, series_instance_uid=p.series_instance_uid, defaults=p.series)
                series_cache[skey] = series
                if created:
                    _tally(per_study, study)["series"] += 1
            series = series_cache[skey]
            instance = Instance(series=series, sop_instance_uid=p.sop_instance_uid, sop_class_uid=p.sop_class_uid,
                                transfer_syntax_uid=p.transfer_syntax_uid, storage_key=spool.key, size=spool.size, **p.instance)
            new.append(instance)
            existing[p.sop_instance_uid] = instance
            acc = _tally(per_study, study)
            acc["n"] += 1
            acc["bytes"] += spool.size
            acc["uids"].append(p.sop_instance_uid)
            if p.series.get("modality"):
                acc["modalities"].add(p.series["modality"])
            counts = per_series.setdefault(series.pk, [0, 0])
            counts[0] += 1
            counts[1] += spool.size
            outcomes[n] = IngestResult(Status.STORED, instance=instance, **_ids(p))
        Instance.objects.bulk_create(new)
        for series_pk, (count, size) in per_series.items():
            Series.objects.filter(pk=series_pk).update(num_instances=F("num_instances") + count, total_bytes=F("total_bytes") + size)
        for study_pk, acc in per_study.items():
            study = acc["study"]
            modalities = set(filter(None, study.modalities.split("\\"))) | acc["modalities"]
            Study.objects.filter(pk=study_pk).update(
                num_instances=F("num_instances") + acc["n"], num_series=F("num_series") + acc["series"],
                total_bytes=F("total_bytes") + acc["bytes"], modalities="\\".join(sorted(modalities))[:100],
                updated_at=timezone.now())
            if acc["n"] or acc.get("adopted"):
                record(Event.INSTANCES_STORED, self.actor, Outcome.SUCCESS, study=study,
                       details={**self.audit_details, "source": self.source, "batch": self.batch.pk if self.batch else None,
                                "instances": acc["n"] + acc.get("adopted", 0), "sop_instance_uids": acc["uids"]})
        return outcomes


def ingest_spool(
    spool: storage.Spool, *, hospital, actor, source: str, batch: IngestBatch | None = None, expected_study_uid: str | None = None,
    audit_details: dict | None = None,
) -> IngestResult:
    """Validate, store and index one spooled file. Never raises for bad input: the result says
    why it was refused. The spool is consumed (moved into storage or deleted)."""
    session = IngestSession(hospital=hospital, actor=actor, source=source, batch=batch,
                            expected_study_uid=expected_study_uid, chunk_size=1, audit_details=audit_details)
    session.add(spool)
    return session.finish()[0]
