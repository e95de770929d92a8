"""Index sync: read an archive's study/series/instance metadata into the central index.

Index only: no pixels move. Studies are read by StudyDate windows from the endpoint's watermark
to today. A window that holds more studies than one page is split in two (adaptive windows), so
every QIDO-RS answer stays at most one page and limit/offset paging is needed only inside one
day that alone exceeds a page. Windows are processed oldest first; each window's index writes,
its audit event, the job's counters and the endpoint's watermark commit in ONE transaction, so
after a crash or an outage the next run starts at the last complete window: nothing is lost
(the watermark never passes an unfinished window) and nothing is duplicated (rows are upserts
keyed by UIDs, the study by (hospital, StudyInstanceUID)).

A study the index has from this archive, dated inside a window the archive answered, that the
answer no longer lists and that the archive says it does not hold when asked for its UID, is
marked withdrawn (Availability.WITHDRAWN: nobody can read it; the row stays for the audit trail);
it comes back if the archive lists it again. An incremental run re-reads only the recent
windows; `sync_archive CODE --since 19800101` reconciles the whole archive.

Every identity goes through the patient index (exchange.mpi.services.identifier_resolve), like
an ingested instance. See docs/decisions/0010-federation.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from pydicom.dataset import Dataset

from audit import record
from audit.models import Event, Outcome
from exchange.federation.connectors import Connector, ConnectorError, connector_for
from exchange.federation.models import SyncJob
from exchange.mpi.identity import parse_da
from exchange.mpi.services import Demographics, IdentityConflict, identifier_resolve
# The same rule the ingest uses to find a Resident Identity Card number in a data set.
from exchange.studies.dicomfile import int_of, name_groups, ric_from, study_fields, text_of
from exchange.studies.models import Availability, Instance, Series, Study
from exchange.studies.names import search_key

log = logging.getLogger(__name__)


def _setting(name: str, default):
    return getattr(settings, name, default)


# --- reading data sets ---------------------------------------------------------------------------


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword) or "").strip().rstrip("\0")
    if not value or len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
        raise ValueError(f"{keyword} is missing or not a valid UID")
    return value


@dataclass
class RemoteInstance:
    sop_instance_uid: str
    sop_class_uid: str
    fields: dict


@dataclass
class RemoteSeries:
    series_instance_uid: str
    fields: dict
    instances: list[RemoteInstance] = field(default_factory=list)


@dataclass
class RemoteStudy:
    study_instance_uid: str
    demographics: Demographics
    fields: dict
    series: list[RemoteSeries] = field(default_factory=list)


def read_study(connector: Connector, ds: Dataset) -> RemoteStudy:
    """The study, its series and instances as the archive describes them (QIDO / C-FIND)."""
    study_uid = _uid(ds, "StudyInstanceUID")
    series_list = []
    for sds in connector.find_series(study_uid):
        series_uid = _uid(sds, "SeriesInstanceUID")
        rs = RemoteSeries(series_uid, {
            "modality": text_of(sds, "Modality", 16),
            "series_number": int_of(sds, "SeriesNumber"),
            "description": text_of(sds, "SeriesDescription"),
            "body_part": text_of(sds, "BodyPartExamined", 64),
        })
        for ids in connector.find_instances(study_uid, series_uid):
            rs.instances.append(RemoteInstance(_uid(ids, "SOPInstanceUID"), str(ids.get("SOPClassUID") or "")[:64], {
                "instance_number": int_of(ids, "InstanceNumber"),
                "rows": int_of(ids, "Rows"),
                "columns": int_of(ids, "Columns"),
                "number_of_frames": int_of(ids, "NumberOfFrames") or 1,
            }))
        series_list.append(rs)
    patient = ds
    if "IssuerOfPatientID" not in ds or "OtherPatientIDsSequence" not in ds:
        # QIDO-RS answers rarely carry the whole patient module: read one instance's header.
        first = next(((s, s.instances[0]) for s in series_list if s.instances), None)
        if first is not None:
            details = connector.patient_details(study_uid, first[0].series_instance_uid, first[1].sop_instance_uid)
            if details is not None:
                patient = details
    alphabetic, ideographic, phonetic = name_groups(patient)
    patient_id = text_of(patient, "PatientID", 64) or text_of(ds, "PatientID", 64)
    if not patient_id:
        raise ValueError("PatientID is missing")
    sex = text_of(patient, "PatientSex", 1).upper()
    demographics = Demographics(
        local_id=patient_id, issuer=text_of(patient, "IssuerOfPatientID", 64), name_alphabetic=alphabetic,
        name_ideographic=ideographic, name_phonetic=phonetic, birth_date=parse_da(patient.get("PatientBirthDate")),
        sex=sex if sex in ("M", "F", "O") else "", ric=ric_from(patient))
    fields = {
        **study_fields(ds),
        "dicom_patient_id": patient_id,
        "issuer_of_patient_id": demographics.issuer,
        "patient_name_alphabetic": alphabetic,
        "patient_name_ideographic": ideographic,
        "patient_name_phonetic": phonetic,
        "patient_birth_date": demographics.birth_date,
        "patient_sex": demographics.sex,
        "name_search": search_key(alphabetic, ideographic, phonetic),
    }
    return RemoteStudy(study_uid, demographics, fields, series_list)


# --- windows ---------------------------------------------------------------------------------


def windows(connector: Connector, start: date, end: date, page: int):
    """Yield (lo, hi, study datasets) for consecutive date windows covering [start, end], oldest
    first, each answer at most ``page`` studies except a single day that alone holds more."""
    stack = [(start, end)]
    while stack:
        lo, hi = stack.pop()
        found = connector.find_studies(lo, hi, limit=page + 1)
        if len(found) > page:
            if lo < hi:
                mid = lo + timedelta(days=(hi - lo).days // 2)
                stack.append((mid + timedelta(days=1), hi))
                stack.append((lo, mid))  # popped first: oldest first
                continue
            # One day holds more than a page: page through it (QIDO-RS) or take the whole day (C-FIND).
            if connector.pages:
                found = []
                while True:
                    chunk = connector.find_studies(lo, hi, limit=page, offset=len(found))
                    found.extend(chunk)
                    if len(chunk) < page:
                        break
            else:
                found = connector.find_studies(lo, hi)
        yield lo, hi, found


# --- writing the index -------------------------------------------------------------------------


@dataclass
class WindowCounts:
    seen: int = 0
    created: int = 0
    updated: int = 0
    withdrawn: int = 0
    series: int = 0
    instances: int = 0
    errors: list = field(default_factory=list)


STUDY_UPDATABLE = ["study_date", "study_time", "accession_number", "study_id", "description", "referring_physician_name",
                   "dicom_patient_id", "issuer_of_patient_id", "patient_name_alphabetic", "patient_name_ideographic",
                   "patient_name_phonetic", "patient_birth_date", "patient_sex", "name_search"]


def index_study(endpoint, remote: RemoteStudy, counts: WindowCounts, actor=None) -> None:
    """Upsert one remote study with its series and instances. Call inside a transaction."""
    hospital = endpoint.hospital
    with transaction.atomic():  # savepoint: a refused identity leaves no rows
        identifier = identifier_resolve(hospital=hospital, demographics=remote.demographics)
        study, created = Study.objects.get_or_create(
            hospital=hospital, study_instance_uid=remote.study_instance_uid,
            defaults={**remote.fields, "patient": identifier.patient, "identifier": identifier,
                      "availability": Availability.REMOTE, "source_endpoint": endpoint})
        study = Study.objects.select_for_update().get(pk=study.pk)
        if study.availability == Availability.LOCAL:
            return  # the hospital also pushed it: the stored copy is the index entry
        changed = created
        if study.patient_id != identifier.patient_id:
            _reassign(study, identifier, endpoint, actor)
            changed = True
        if study.availability == Availability.WITHDRAWN:  # the archive holds it again
            Study.objects.filter(pk=study.pk).update(availability=Availability.REMOTE)
            study.availability = Availability.REMOTE
            changed = True
        if not created:
            dirty = [f for f in STUDY_UPDATABLE if getattr(study, f) != remote.fields[f]]
            for f in dirty:
                setattr(study, f, remote.fields[f])
            if study.source_endpoint_id != endpoint.pk:
                study.source_endpoint = endpoint
                dirty.append("source_endpoint")
            if dirty:
                study.save(update_fields=[*dirty, "updated_at"])
                changed = True
        existing_series = {s.series_instance_uid: s for s in Series.objects.filter(study=study)}
        existing_instances = set(Instance.objects.filter(series__study=study).values_list("sop_instance_uid", flat=True))
        new_instances = []
        for rs in remote.series:
            series = existing_series.get(rs.series_instance_uid)
            if series is None:
                series = Series.objects.create(study=study, series_instance_uid=rs.series_instance_uid, **rs.fields)
                existing_series[rs.series_instance_uid] = series
                counts.series += 1
                changed = True
            for ri in rs.instances:
                if ri.sop_instance_uid in existing_instances:
                    continue
                existing_instances.add(ri.sop_instance_uid)
                new_instances.append(Instance(series=series, sop_instance_uid=ri.sop_instance_uid, sop_class_uid=ri.sop_class_uid,
                                              transfer_syntax_uid="", storage_key="", size=0, **ri.fields))
        if new_instances:
            Instance.objects.bulk_create(new_instances, batch_size=500)
            counts.instances += len(new_instances)
            changed = True
        if changed:
            per_series = dict(Series.objects.filter(study=study).annotate(n=Count("instances")).values_list("pk", "n"))
            for series in existing_series.values():
                if series.num_instances != per_series.get(series.pk, 0):
                    Series.objects.filter(pk=series.pk).update(num_instances=per_series.get(series.pk, 0))
            modalities = sorted({s.modality for s in existing_series.values() if s.modality})
            Study.objects.filter(pk=study.pk).update(num_series=len(per_series), num_instances=sum(per_series.values()),
                                                     modalities="\\".join(modalities)[:100], updated_at=timezone.now())
    if created:
        counts.created += 1
    elif changed:
        counts.updated += 1


def gone_from_source(endpoint, connector: Connector, lo: date, hi: date, present: set[str]) -> list[int]:
    """Index entries of this archive dated in [lo, hi] that the window's answer does not list and
    that the archive, asked for each one's StudyInstanceUID, says it no longer holds. A window's
    answer is complete by construction (windows()), but an archive that silently caps its
    answers would look as if it had lost studies: hence the per-study question. Network only;
    call outside the transaction."""
    candidates = (Study.objects.filter(source_endpoint=endpoint, availability=Availability.REMOTE,
                                       study_date__gte=lo, study_date__lte=hi)
                  .exclude(study_instance_uid__in=present).values_list("pk", "study_instance_uid"))
    return [pk for pk, uid in candidates if not connector.holds_study(uid)]


def withdraw(endpoint, study_ids: list[int], actor, job_id: int | None) -> int:
    """Mark studies the archive no longer holds as withdrawn (nobody can read them; their rows
    stay for the audit trail, consents and share links), one audit event each. Call inside the
    window's transaction."""
    n = 0
    for study in Study.objects.select_for_update().filter(pk__in=study_ids, source_endpoint=endpoint,
                                                           availability=Availability.REMOTE):
        study.availability = Availability.WITHDRAWN
        study.save(update_fields=["availability", "updated_at"])
        record(Event.IMPORT, actor, Outcome.SUCCESS, study=study,
               details={"action": "withdrawn_at_source", "endpoint": endpoint.pk, "hospital": endpoint.hospital.code,
                        "job": job_id})
        n += 1
    return n


def _reassign(study, identifier, endpoint, actor) -> None:
    """The archive now files this study under another of its patients (a PACS correction: the
    study had been registered to the wrong patient). The archive is the authority on its own
    studies, and showing a study under the wrong patient is the worse error: the index follows
    it, in the same transaction, with a PATIENT_RECORD audit event naming both patients by key.
    Access follows at once: consents, share links and break-glass are per patient, so the first
    patient's no longer reach the study. Called only for remote (or withdrawn) studies: a stored
    study's patient comes from its own files (the ingest refuses a conflicting push)."""
    previous = study.patient_id
    study.patient, study.identifier = identifier.patient, identifier
    study.save(update_fields=["patient", "identifier", "updated_at"])
    record(Event.PATIENT_RECORD, actor, Outcome.SUCCESS, study=study, patient=identifier.patient,
           details={"action": "study_reassigned_at_source", "endpoint": endpoint.pk, "hospital": endpoint.hospital.code,
                    "from_patient": previous, "to_patient": identifier.patient_id})
    log.info("sync: endpoint %s moved study %s to another patient at its source", endpoint.pk, study.pk)


# --- the job -----------------------------------------------------------------------------------


def sync_range(endpoint, since: date | None) -> tuple[date, date]:
    today = timezone.localdate()
    if since is not None:
        start = since
    elif endpoint.sync_watermark is not None:
        # Re-read the watermark day itself (and a look-back): studies dated then may arrive late.
        start = endpoint.sync_watermark - timedelta(days=int(_setting("FEDERATION_SYNC_LOOKBACK_DAYS", 1)))
    else:
        start = parse_da(_setting("FEDERATION_SYNC_EPOCH", "19800101")) or date(1980, 1, 1)
    return min(start, today), today


def run_sync(job: SyncJob, *, since: date | None = None, connector: Connector | None = None,
             after_window=None) -> SyncJob:
    """Sync one claimed (running) job to the end. Raises ConnectorError when the archive fails;
    the windows committed so far stay, and the watermark marks where the next run resumes."""
    from hospitals.models import ArchiveEndpoint

    endpoint = ArchiveEndpoint.objects.select_related("hospital").get(pk=job.endpoint_id)
    connector = connector or connector_for(endpoint)
    page = int(_setting("FEDERATION_QIDO_PAGE", 200))
    start, end = sync_range(endpoint, since)
    total_days = (end - start).days + 1
    SyncJob.objects.filter(pk=job.pk).update(watermark_from=start, watermark_to=end)
    job.watermark_from, job.watermark_to = start, end
    for lo, hi, found in windows(connector, start, end, page):
        counts = WindowCounts()
        remote_studies = []
        for ds in found:  # network first, outside the transaction
            counts.seen += 1
            try:
                remote_studies.append(read_study(connector, ds))
            except ValueError as exc:
                counts.errors.append({"code": "bad_data", "study": str(ds.get("StudyInstanceUID") or "")[:64], "message": str(exc)})
        # A study the index has from this archive in this window, but the archive no longer lists.
        gone = gone_from_source(endpoint, connector, lo, hi, {str(ds.get("StudyInstanceUID") or "").strip() for ds in found})
        with transaction.atomic():
            for remote in remote_studies:
                try:
                    index_study(endpoint, remote, counts, actor=job.requested_by)
                except IdentityConflict as exc:
                    counts.errors.append({"code": "identity_conflict", "study": remote.study_instance_uid, "message": str(exc)})
            counts.withdrawn = withdraw(endpoint, gone, job.requested_by, job.pk)
            job = SyncJob.objects.select_for_update().get(pk=job.pk)
            job.studies_seen += counts.seen
            job.studies_created += counts.created
            job.studies_updated += counts.updated
            job.studies_withdrawn += counts.withdrawn
            job.series += counts.series
            job.instances += counts.instances
            job.windows_done += 1
            job.errors = (job.errors + counts.errors)[:500]
            job.progress = min(100, round(100 * ((hi - start).days + 1) / total_days))
            job.heartbeat_at = timezone.now()
            job.save()
            type(endpoint).objects.filter(pk=endpoint.pk).update(sync_watermark=hi)
            record(Event.IMPORT, job.requested_by, Outcome.MINOR_FAILURE if counts.errors else Outcome.SUCCESS,
                   details={"action": "federation_sync", "endpoint": endpoint.pk, "hospital": endpoint.hospital.code,
                            "job": job.pk, "window": [f"{lo:%Y%m%d}", f"{hi:%Y%m%d}"], "studies_seen": counts.seen,
                            "studies_created": counts.created, "studies_updated": counts.updated,
                            "studies_withdrawn": counts.withdrawn,
                            "series": counts.series, "instances": counts.instances, "errors": len(counts.errors)})
        if after_window is not None:
            after_window(lo, hi)
    return job


__all__ = ["ConnectorError", "RemoteStudy", "read_study", "windows", "index_study", "gone_from_source", "withdraw",
           "run_sync", "sync_range"]
