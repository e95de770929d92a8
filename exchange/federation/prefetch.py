"""Prefetch of priors: when an order or appointment arrives, warm the retrieve cache with the
patient's earlier studies held by hospital archives, so the reading clinician does not wait for
them (issue #6).

Prefetch moves bytes from a hospital archive into the platform's cache and shows nothing to
anyone: every later read still goes through consent.policy and is audited as a read. It is
itself audited: the request (by the API), and per study the instances moved
(INSTANCES_TRANSFERRED with details {"prefetch": true}). It considers all of the patient's remote
studies, not only those the requester may see today — a consent is often given when the patient
arrives — but the requester never learns which or how many there are.

Idempotent: an instance already in the cache is skipped, so a second run fetches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.db import models, transaction

from audit import record
from audit.models import Event, Outcome
from exchange.federation import proxy
from exchange.federation.connectors import ConnectorError
from exchange.studies.models import Availability, Instance, Study


class PrefetchReason(models.TextChoices):
    ORDER = "order", "An order (imaging or consultation)"
    APPOINTMENT = "appointment", "An appointment"
    REFERRAL = "referral", "A referral"
    OTHER = "other", "Other (operator)"


def prior_studies(patient_id: int, *, modalities: list[str] | tuple = (), date_from: date | None = None,
                  date_to: date | None = None, limit: int | None = None) -> list[Study]:
    """The patient's remote studies to warm: most recent first, optionally narrowed by modality
    (any of ModalitiesInStudy) and StudyDate window; at most ``limit`` (default
    EXCHANGE_PREFETCH_STUDIES)."""
    qs = Study.objects.filter(patient_id=patient_id, availability=Availability.REMOTE, source_endpoint__isnull=False)
    if date_from:
        qs = qs.filter(study_date__gte=date_from)
    if date_to:
        qs = qs.filter(study_date__lte=date_to)
    wanted = {m.strip().upper() for m in modalities if m and m.strip()}
    studies = []
    n = limit if limit is not None else settings.EXCHANGE_PREFETCH_STUDIES
    for study in qs.select_related("source_endpoint").order_by("-study_date", "-id"):
        if wanted and not wanted & set(study.modalities.upper().split("\\")):
            continue
        studies.append(study)
        if len(studies) >= n:
            break
    return studies


@dataclass
class PrefetchResult:
    studies: int = 0
    fetched: int = 0
    cached: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list = field(default_factory=list)  # [{"study": pk, "code": ...}]: no patient data

    def as_dict(self) -> dict:
        return {"studies": self.studies, "fetched": self.fetched, "cached": self.cached, "failed": self.failed,
                "bytes": self.bytes, "errors": self.errors}


def _audit(study, actor, reason: str, fetched: int, size: int, error: str = "") -> None:
    details = {"prefetch": True, "reason": reason, "instances": fetched, "bytes": size}
    if error:
        details["source_error"] = error
    with transaction.atomic():
        record(Event.INSTANCES_TRANSFERRED, actor, Outcome.SERIOUS_FAILURE if error and not fetched else Outcome.SUCCESS,
               study=study, details=details)


def prefetch_study(study: Study, *, actor=None, reason: str = "", result: PrefetchResult | None = None) -> PrefetchResult:
    """Fetch every instance of one remote study into the cache (those cached are skipped). A
    transient archive failure is re-raised after auditing what moved (the task retries); others
    are counted and the study is left."""
    result = result or PrefetchResult()
    result.studies += 1
    instances = (Instance.objects.filter(series__study=study).select_related("series__study__source_endpoint__hospital")
                 .order_by("series_id", "instance_number", "id"))
    counts = proxy.Warmed()
    try:
        # A series not cached comes in one request; cached instances are touched: kept warm.
        proxy.warm(instances, counts)
    except ConnectorError as exc:
        fetched, size = counts.fetched, counts.bytes
        result.cached += counts.there
        result.failed += 1
        result.errors.append({"study": study.pk, "code": exc.code})
        _audit(study, actor, reason, fetched, size, error=exc.code)
        result.fetched += fetched
        result.bytes += size
        if exc.transient:
            raise
        return result
    result.cached += counts.there
    result.fetched += counts.fetched
    result.bytes += counts.bytes
    if counts.fetched:
        _audit(study, actor, reason, counts.fetched, counts.bytes)
    return result


def prefetch_priors(*, patient_id: int, modalities=(), date_from: date | None = None, date_to: date | None = None,
                    limit: int | None = None, actor=None, reason: str = "") -> PrefetchResult:
    result = PrefetchResult()
    for study in prior_studies(patient_id, modalities=modalities, date_from=date_from, date_to=date_to, limit=limit):
        prefetch_study(study, actor=actor, reason=reason, result=result)
    return result
