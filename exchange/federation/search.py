"""Federated search: one patient's studies from the central index at once and, on request,
refreshed from the hospitals' live archives in parallel, each archive within its own deadline
(issue #6).

Who may search is the patient index's rule (``exchange.mpi.selectors.patient_may_see``); what
is shown is always ``consent.policy.visible_studies`` over the index, re-read after the refresh,
so an archive's answer never reaches the caller except through the policy.

A refresh asks every live DICOMweb or DIMSE archive of the hospitals that registered the patient
(``PatientIdentifier``) or whose archive the index already holds studies from, with the patient's
local ids there: QIDO-RS ``PatientID=`` (PS3.18 §10.6.1.2) or C-FIND Study Root at STUDY level
(PS3.4 C.6.2.1). Worker threads do network only — the study query, then for a new or changed
study its series and instances (``sync.read_study``) — each call given the time left before the
archive's deadline (its own timeout capped by ``EXCHANGE_FEDERATED_SEARCH_TIMEOUT``). The caller
waits for each archive until its deadline and never longer, never joins a thread still waiting
on a hung archive, and then writes what came back into the index in its own thread through the
sync's ``index_study`` (identities through the patient index's matcher), one transaction and one
IMPORT audit event per archive that changed the index. One QUERY audit event per search lists the
archives asked and how each fared (no identifiers: the event names the patient by its key).

The answer says, per archive: answered (live now), did not answer within its deadline, failed
(the connector's error kind, never a host name or patient data), or skipped (not live, not
asked); and for anything not live, the time of the index it comes from (the archive's last sync).

An archive that timed out or failed in a way that may pass is not asked by the next refreshes for
a while (``_back_off``: 30 s doubling to 10 min, on the endpoint row so all workers agree): one
dead archive must not cost every clinician's search its whole deadline. It is "skipped" with the
reason until then, and asked at once again after it answers, syncs or passes a connection test.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone
from pydicom.dataset import Dataset

from audit import record
from audit.models import Event, Outcome
from consent import policy
from exchange.federation.connectors import TRANSIENT, Connector, ConnectorError, ErrorCode, connector_for
from exchange.federation.sync import RemoteStudy, WindowCounts, index_study, read_study
from exchange.mpi.models import Patient, PatientIdentifier
from exchange.mpi.selectors import patient_may_see
from exchange.mpi.services import IdentityConflict
from exchange.studies.models import Availability, Study
from hospitals.models import ArchiveEndpoint, EndpointKind, EndpointStatus

log = logging.getLogger(__name__)
# urllib3 logs every request line at DEBUG, and a federated search's carries a PatientID: never
# below INFO, whatever LOG_LEVEL says (as connectors/dimse.py silences pynetdicom's identifiers).
if logging.getLogger("urllib3.connectionpool").level < logging.INFO:
    logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

# More archives than this for one patient queue behind each other (their deadlines still hold).
MAX_WORKERS = 32


class ArchiveState(models.TextChoices):
    ANSWERED = "answered", "Answered"
    TIMEOUT = "timeout", "Did not answer"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Not asked"


class PatientNotVisible(PermissionError):
    """The actor may not see this patient: answered like an unknown patient (404)."""


@dataclass
class ArchiveStatus:
    """How one archive fared in one search. Shown to the searching clinician: hospital and
    endpoint names, never URLs, hosts, AE titles or the archive's own error text."""

    endpoint_id: int
    hospital: str
    hospital_code: str
    endpoint: str
    kind: str
    status: str = ArchiveState.SKIPPED
    code: str = ""
    message: str = ""
    # This archive's studies in the answer, i.e. among those the actor may see.
    studies: int = 0
    elapsed_ms: int | None = None
    # The archive's last finished index sync: how old the index's part for it is.
    index_as_of: datetime | None = None
    deadline: float = 0.0
    # Index writes of the refresh (all studies, visible or not: internal, not shown).
    created: int = 0
    updated: int = 0
    confirmed: set = field(default_factory=set)

    @property
    def live(self) -> bool:
        return self.status == ArchiveState.ANSWERED

    @property
    def freshness(self) -> str:
        if self.live:
            return "live now"
        if self.index_as_of is None:
            return "not indexed yet"
        return f"index as of {timezone.localtime(self.index_as_of):%Y-%m-%d %H:%M}"

    @property
    def summary(self) -> str:
        """One line for people: "answered · live", "did not answer within 5 s · index as of ...",
        "failed: connection refused · index as of ..."."""
        if self.status == ArchiveState.ANSWERED:
            return "answered · live"
        if self.status == ArchiveState.TIMEOUT:
            head = f"did not answer within {self.deadline:g} s"
        elif self.status == ArchiveState.FAILED:
            head = f"failed: {_lower_first(self.message)}"
        else:
            head = self.message or "not asked"
        return f"{head} · {self.freshness}"

    def as_dict(self) -> dict:
        return {
            "hospital": self.hospital, "hospital_code": self.hospital_code, "endpoint": self.endpoint, "kind": self.kind,
            "status": self.status, "code": self.code, "message": self.message, "summary": self.summary,
            "studies": self.studies, "elapsed_ms": self.elapsed_ms, "freshness": self.freshness,
            "index_as_of": self.index_as_of.isoformat() if self.index_as_of else None,
        }


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


@dataclass
class FederatedResult:
    patient: Patient
    studies: list[Study]  # what the actor may see, newest first
    archives: list[ArchiveStatus]
    refreshed: bool
    elapsed_ms: int

    def archive_of(self, study: Study) -> ArchiveStatus | None:
        return next((a for a in self.archives if a.endpoint_id == study.source_endpoint_id), None)

    def freshness_of(self, study: Study) -> str:
        if study.availability != Availability.REMOTE:
            return "stored on the platform"
        archive = self.archive_of(study)
        if archive is None:
            return "index"
        if archive.live and study.study_instance_uid not in archive.confirmed:
            return "index only: not in the archive's answer now"
        return archive.freshness


# --- finding the patient -----------------------------------------------------------------------


def surviving(patient: Patient | None) -> Patient | None:
    """The patient a merged record now lives on."""
    seen = set()
    while patient is not None and patient.merged_into_id and patient.pk not in seen:
        seen.add(patient.pk)
        patient = Patient.objects.get(pk=patient.merged_into_id)
    return patient


def patient_lookup(value: str, issuer: str = "") -> Patient | None:
    """The patient named by an enterprise id (UUID), by ``<assigning authority>|<local id>``, or
    by a local id with its ``issuer`` (assigning authority). ValueError: malformed; None: unknown."""
    value, issuer = (value or "").strip(), (issuer or "").strip()
    if any(ord(c) < 32 for c in value + issuer):
        raise ValueError("the patient parameter contains control characters")
    if not value:
        raise ValueError("give patient=<enterprise id> or patient=<assigning authority>|<local id>")
    if not issuer and "|" not in value:
        try:
            enterprise_id = uuid.UUID(value)
        except ValueError:
            raise ValueError("patient must be an enterprise id (UUID) or <assigning authority>|<local id>, "
                             "or give issuer= with a local id") from None
        return surviving(Patient.objects.filter(enterprise_id=enterprise_id).first())
    local_id = value
    if not issuer:
        issuer, _, local_id = value.partition("|")
    if not issuer or not local_id or len(issuer) > 64 or len(local_id) > 64:
        raise ValueError("an identifier is <assigning authority>|<local id>, each at most 64 characters")
    ident = (PatientIdentifier.objects.select_related("patient")
             .filter(hospital__assigning_authority=issuer, local_id=local_id).first())
    return surviving(ident.patient) if ident else None


# --- the network side (worker threads: no database) ----------------------------------------------


class _Clock(Connector):
    """A connector whose every call gets the time left before the deadline as its timeout, and
    none starts after it (read_study makes several calls; one archive gets one deadline)."""

    def __init__(self, connector: Connector, deadline: float):
        self.connector = connector
        self.deadline = deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0.01:
            raise ConnectorError(ErrorCode.TIMEOUT, "deadline passed")
        self.connector.timeout = left  # both connectors read it per request / association

    def find_patient_studies(self, patient_id, issuer=None, *, limit=None):
        self._arm()
        return self.connector.find_patient_studies(patient_id, issuer, limit=limit)

    def find_series(self, study_uid):
        self._arm()
        return self.connector.find_series(study_uid)

    def find_instances(self, study_uid, series_uid):
        self._arm()
        return self.connector.find_instances(study_uid, series_uid)

    def patient_details(self, study_uid, series_uid, sop_instance_uid):
        self._arm()
        return self.connector.patient_details(study_uid, series_uid, sop_instance_uid)


def _count(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(str(ds.get(keyword)).strip())
    except (TypeError, ValueError):
        return None


@dataclass
class _Answer:
    remotes: list[RemoteStudy]
    confirmed: set
    errors: list
    finished: float
    failure: Exception | None = None


def _ask(connector: Connector, local_ids: list[str], deadline: float, limit: int, known: dict) -> _Answer:
    """One archive's part of a refresh, in a worker thread. ``known``: {StudyInstanceUID: (series,
    instances)} the index holds for the patient at this hospital (None: stored locally); a study
    the archive reports with the same counts is not read again."""
    clock = _Clock(connector, deadline)
    remotes, confirmed, errors = [], set(), []
    try:
        for local_id in local_ids:
            for ds in clock.find_patient_studies(local_id, limit=limit)[:limit]:
                # A local id holding '*' or '?' is a wildcard to the archive: keep exact matches only.
                if str(ds.get("PatientID") or "").strip() != local_id:
                    continue
                uid = str(ds.get("StudyInstanceUID") or "").strip()
                if uid in confirmed:
                    continue
                confirmed.add(uid)
                if uid in known and (known[uid] is None or known[uid] == (
                        _count(ds, "NumberOfStudyRelatedSeries"), _count(ds, "NumberOfStudyRelatedInstances"))):
                    continue  # unchanged since the index last read it
                try:
                    remotes.append(read_study(clock, ds))
                except ValueError as exc:  # UIDs or PatientID missing: reported by UID, no patient data
                    errors.append({"code": "bad_data", "study": uid[:64], "message": str(exc)})
    except Exception as exc:  # reported by the caller, with the moment it happened
        return _Answer([], set(), [], time.monotonic(), failure=exc)
    return _Answer(remotes, confirmed, errors, time.monotonic())


# --- the search ---------------------------------------------------------------------------------


@dataclass
class _Job:
    status: ArchiveStatus
    endpoint: ArchiveEndpoint
    connector: Connector
    local_ids: list[str]
    known: dict
    answer: _Answer | None = None


def _deadline_cap(timeout: float | None) -> float:
    cap = float(timeout if timeout is not None else getattr(settings, "EXCHANGE_FEDERATED_SEARCH_TIMEOUT", 5.0))
    if cap <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    return cap


def _plan(patient: Patient, refresh: bool, cap: float) -> tuple[list[ArchiveStatus], list[_Job]]:
    local_ids: dict[int, list[str]] = {}
    for hospital_id, local_id in PatientIdentifier.objects.filter(patient=patient).order_by("pk").values_list(
            "hospital_id", "local_id"):
        local_ids.setdefault(hospital_id, []).append(local_id)
    hospital_ids = set(local_ids) | set(Study.objects.filter(patient=patient, source_endpoint__isnull=False)
                                        .values_list("hospital_id", flat=True))
    endpoints = (ArchiveEndpoint.objects
                 .filter(hospital_id__in=hospital_ids, kind__in=[EndpointKind.DICOMWEB, EndpointKind.DIMSE])
                 .select_related("hospital").order_by("hospital__code", "name"))
    statuses, jobs = [], []
    for endpoint in endpoints:
        status = ArchiveStatus(endpoint.pk, endpoint.hospital.name, endpoint.hospital.code, endpoint.name, endpoint.kind,
                               index_as_of=endpoint.last_sync_at, deadline=min(float(endpoint.timeout or cap), cap))
        statuses.append(status)
        ids = local_ids.get(endpoint.hospital_id, [])
        if not refresh:
            status.message = "not refreshed"
        elif endpoint.status != EndpointStatus.LIVE:
            status.message = f"not live ({endpoint.get_status_display().lower()})"
        elif endpoint.search_retry_after is not None and endpoint.search_retry_after > timezone.now():
            status.message = (f"not asked: it did not answer the last {endpoint.search_failures} time(s); asked again "
                              f"from {timezone.localtime(endpoint.search_retry_after):%H:%M:%S}")
        elif not ids:
            status.message = "no local id of the patient at this hospital"
        else:
            try:
                connector = connector_for(endpoint)
            except Exception as exc:  # a secret that no key decrypts, a bad kind: the admin's to fix
                status.status, status.code = ArchiveState.FAILED, getattr(exc, "code", ErrorCode.CONFIG)
                status.message = ErrorCode.CONFIG.label
                log.warning("federated search: endpoint %s not usable (%s)", endpoint.pk, type(exc).__name__)
                continue
            known = {uid: (n_series, n_instances) if availability == Availability.REMOTE else None
                     for uid, n_series, n_instances, availability in Study.objects.filter(
                         hospital_id=endpoint.hospital_id, patient=patient).values_list(
                         "study_instance_uid", "num_series", "num_instances", "availability")}
            jobs.append(_Job(status, endpoint, connector, ids, known))
    return statuses, jobs


def _collect(jobs: list[_Job], limit: int, t0: float) -> None:
    """Ask every archive at once; wait for each until its own deadline (counted from ``t0``, the
    start of the search, so the whole call keeps to it), never longer."""
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), MAX_WORKERS), thread_name_prefix="federated-search")
    try:
        running = []
        for job in jobs:
            started = time.monotonic()
            deadline = t0 + job.status.deadline
            running.append((deadline, started, job, pool.submit(_ask, job.connector, job.local_ids, deadline, limit, job.known)))
        for deadline, started, job, future in sorted(running, key=lambda r: r[0]):
            status = job.status
            try:
                answer = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                status.status, status.code = ArchiveState.TIMEOUT, ErrorCode.TIMEOUT
                status.message = f"did not answer within {status.deadline:g} s"
                status.elapsed_ms = round((time.monotonic() - started) * 1000)
                continue
            status.elapsed_ms = round((answer.finished - started) * 1000)
            exc = answer.failure
            if exc is None:
                job.answer = answer
                status.status, status.code = ArchiveState.ANSWERED, ErrorCode.OK
                status.confirmed = answer.confirmed
            elif isinstance(exc, ConnectorError) and exc.code == ErrorCode.TIMEOUT:
                status.status, status.code = ArchiveState.TIMEOUT, ErrorCode.TIMEOUT
                status.message = f"did not answer within {status.deadline:g} s"
            elif isinstance(exc, ConnectorError):
                status.status, status.code = ArchiveState.FAILED, exc.code
                status.message = ErrorCode(exc.code).label if exc.code in ErrorCode.values else ErrorCode.PROTOCOL.label
                # The connector's own text names hosts, never patients: for the operator's log only.
                log.info("federated search: endpoint %s %s: %s", job.endpoint.pk, exc.code, exc.message)
            else:
                status.status, status.code, status.message = ArchiveState.FAILED, ErrorCode.PROTOCOL, ErrorCode.PROTOCOL.label
                log.warning("federated search: endpoint %s failed (%s)", job.endpoint.pk, type(exc).__name__)
    finally:
        # Threads still waiting on a hung archive end at their own socket timeout (the deadline).
        pool.shutdown(wait=False, cancel_futures=True)


def _index(actor, job: _Job) -> None:
    """Write one archive's answer into the index exactly as the sync does (caller's thread)."""
    answer, endpoint, status = job.answer, job.endpoint, job.status
    counts = WindowCounts(seen=len(answer.confirmed), errors=list(answer.errors))
    try:
        with transaction.atomic():
            for remote in answer.remotes:
                try:
                    index_study(endpoint, remote, counts, actor=actor)
                except IdentityConflict as exc:
                    counts.errors.append({"code": "identity_conflict", "study": remote.study_instance_uid, "message": str(exc)})
            if counts.created or counts.updated or counts.errors:
                record(Event.IMPORT, actor, Outcome.MINOR_FAILURE if counts.errors else Outcome.SUCCESS,
                       details={"action": "federated_refresh", "endpoint": endpoint.pk, "hospital": endpoint.hospital.code,
                                "studies_seen": counts.seen, "studies_created": counts.created,
                                "studies_updated": counts.updated, "series": counts.series,
                                "instances": counts.instances, "errors": len(counts.errors)})
    except Exception as exc:  # nothing of this archive's answer is kept; the others' are
        log.warning("federated search: indexing the answer of endpoint %s failed (%s)", endpoint.pk, type(exc).__name__)
        status.status, status.code, status.message = ArchiveState.FAILED, "index", "its answer could not be indexed"
        status.confirmed = set()
        return
    status.created, status.updated = counts.created, counts.updated


def _back_off(jobs: list[_Job]) -> None:
    """Remember on each endpoint row how its archive fared: an archive that timed out or failed
    in a way that may pass (refused, DNS, 5xx, garbage) is not asked by the next refreshes for
    FEDERATION_SEARCH_BACKOFF_SECONDS × 2^(failures − 1), at most FEDERATION_SEARCH_BACKOFF_MAX_SECONDS,
    so one dead archive does not cost every clinician's search its whole deadline; one that
    answered is asked again at once. A successful sync or connection test also resets it."""
    base = float(getattr(settings, "FEDERATION_SEARCH_BACKOFF_SECONDS", 30))
    ceiling = float(getattr(settings, "FEDERATION_SEARCH_BACKOFF_MAX_SECONDS", 600))
    now = timezone.now()
    for job in jobs:
        status, endpoint = job.status, job.endpoint
        if status.status == ArchiveState.ANSWERED:
            if endpoint.search_failures or endpoint.search_retry_after:
                ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(search_failures=0, search_retry_after=None)
        elif status.status == ArchiveState.TIMEOUT or (status.status == ArchiveState.FAILED and status.code in TRANSIENT):
            failures = endpoint.search_failures + 1
            wait = min(ceiling, base * 2 ** min(failures - 1, 20))
            ArchiveEndpoint.objects.filter(pk=endpoint.pk).update(
                search_failures=F("search_failures") + 1, search_retry_after=now + timedelta(seconds=wait))


def federated_search(actor, patient: Patient, *, refresh: bool = False, timeout: float | None = None,
                     channel: str = "api", details: dict | None = None) -> FederatedResult:
    """The studies of ``patient`` that ``actor`` may see, from the central index; with
    ``refresh``, first refreshed from the patient's hospitals' live archives in parallel.

    ``timeout`` caps every archive's deadline (seconds; default EXCHANGE_FEDERATED_SEARCH_TIMEOUT):
    the call returns within about the longest deadline plus the index writes. Raises
    PatientNotVisible (audited as ACCESS_DENIED) when the actor may not see the patient at all.
    ``channel`` ("api", "page", "bench") goes into the audit event, with ``details`` (the
    caller's own description of the action, e.g. the search page's query): one event per action.
    """
    started = time.monotonic()
    cap = _deadline_cap(timeout)
    patient = surviving(patient)
    purpose = policy.purpose_for(actor)
    if not patient_may_see(actor, patient):
        with transaction.atomic():
            record(Event.ACCESS_DENIED, actor, Outcome.MINOR_FAILURE, patient=patient, purpose=purpose,
                   details={"action": "federated_search", "channel": channel,
                            "reason": "no study or record of this patient that you may see"})
        raise PatientNotVisible("no patient with this identifier that you may see")
    statuses, jobs = _plan(patient, refresh, cap)
    if jobs:
        _collect(jobs, int(getattr(settings, "FEDERATION_QIDO_PAGE", 200)), started)
        _back_off(jobs)
        for job in jobs:
            if job.answer is not None and job.status.live:
                _index(actor, job)
    studies = list(policy.visible_studies(actor, Study.objects.filter(patient=patient))
                   .select_related("hospital", "source_endpoint").order_by("-study_date", "-id"))
    for status in statuses:
        status.studies = sum(1 for s in studies if s.source_endpoint_id == status.endpoint_id)
    asked = [s for s in statuses if s.status != ArchiveState.SKIPPED]
    partial = any(s.status in (ArchiveState.TIMEOUT, ArchiveState.FAILED) for s in asked)
    with transaction.atomic():
        record(Event.QUERY, actor, Outcome.MINOR_FAILURE if partial else Outcome.SUCCESS, patient=patient, purpose=purpose,
               details={**(details or {}), "action": "federated_search", "channel": channel, "refresh": bool(refresh),
                        "results": len(studies),
                        "archives": [{"hospital": s.hospital_code, "endpoint": s.endpoint_id, "status": s.status,
                                      "code": s.code} for s in statuses]})
    return FederatedResult(patient, studies, statuses, bool(refresh), round((time.monotonic() - started) * 1000))


__all__ = ["ArchiveState", "ArchiveStatus", "FederatedResult", "PatientNotVisible", "federated_search", "patient_lookup"]
