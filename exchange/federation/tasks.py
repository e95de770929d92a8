"""Celery tasks of the federation. They take ids, call services, and can run twice: a job is
claimed with a conditional update, index rows are upserts, the watermark only moves forward
after a whole window committed."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from exchange.federation.connectors import ConnectorError
from exchange.federation.models import SyncJob
from exchange.federation.services import sync_job_claim, sync_job_create, sync_job_finish, sync_job_requeue
from exchange.mpi.identity import parse_da

log = logging.getLogger(__name__)


def _backoff(retries: int) -> int:
    base = int(getattr(settings, "FEDERATION_RETRY_BASE_SECONDS", 30))
    return min(base * 2 ** retries, 3600)


@shared_task(bind=True, acks_late=True, max_retries=5)
def sync_endpoint_task(self, endpoint_id: int, since: str | None = None, job_id: int | None = None) -> dict:
    """Index sync of one archive endpoint. ``since``: YYYYMMDD to start from instead of the watermark."""
    from exchange.federation.sync import run_sync
    from hospitals.models import ArchiveEndpoint, EndpointStatus

    if job_id is None:
        endpoint = ArchiveEndpoint.objects.get(pk=endpoint_id)
        job = sync_job_create(endpoint=endpoint, trigger="periodic")
        if job is None:
            return {"status": "skipped", "reason": "a sync of this endpoint is already queued or running"}
        job_id = job.pk
    if not sync_job_claim(job_id):
        return {"status": "skipped", "reason": "the job is taken or finished", "job": job_id}
    job = SyncJob.objects.get(pk=job_id)
    try:
        job = run_sync(job, since=parse_da(since) if since else None)
    except ConnectorError as exc:
        if exc.transient and self.request.retries < self.max_retries and not self.request.is_eager:
            countdown = _backoff(self.request.retries)
            sync_job_requeue(job_id, f"{exc.message} Retrying in {countdown} s.")
            log.warning("sync of endpoint %s failed (%s); retry in %ss", endpoint_id, exc.code, countdown)
            raise self.retry(countdown=countdown, kwargs={"endpoint_id": endpoint_id, "since": since, "job_id": job_id})
        sync_job_finish(job_id, failed=True, message=exc.message)
        ArchiveEndpoint.objects.filter(pk=endpoint_id, status=EndpointStatus.SYNCING).update(status=EndpointStatus.FAILED)
        return {"status": "failed", "job": job_id, "code": exc.code}
    except Exception as exc:
        # Only the type: database errors can quote key values (patient ids).
        sync_job_finish(job_id, failed=True, message=f"internal error ({type(exc).__name__})")
        raise
    sync_job_finish(job_id)
    return {"status": "done", "job": job_id, "studies_seen": job.studies_seen, "studies_created": job.studies_created}


@shared_task(acks_late=True)
def sync_live_endpoints_task() -> dict:
    """Beat: an incremental sync of every live DICOMweb/DIMSE endpoint."""
    from hospitals.models import ArchiveEndpoint, EndpointKind, EndpointStatus

    queued = 0
    for endpoint_id in ArchiveEndpoint.objects.filter(
            status=EndpointStatus.LIVE, kind__in=[EndpointKind.DICOMWEB, EndpointKind.DIMSE]).values_list("pk", flat=True):
        sync_endpoint_task.delay(endpoint_id)
        queued += 1
    return {"queued": queued}


@shared_task(bind=True, acks_late=True, max_retries=5)
def prefetch_priors_task(self, patient_id: int, modalities: list | None = None, date_from: str | None = None,
                         date_to: str | None = None, limit: int | None = None, requested_by: int | None = None,
                         reason: str = "") -> dict:
    """Warm the retrieve cache with a patient's earlier remote studies (exchange/federation/prefetch.py).
    Idempotent: cached instances are skipped, so a retry or a second order fetches only what is
    missing. Transient archive errors retry with backoff like sync_endpoint_task. Dates: YYYYMMDD."""
    from django.contrib.auth import get_user_model

    from exchange.federation.prefetch import prefetch_priors

    actor = get_user_model().objects.filter(pk=requested_by).first() if requested_by else None
    try:
        result = prefetch_priors(patient_id=patient_id, modalities=modalities or (),
                                 date_from=parse_da(date_from) if date_from else None,
                                 date_to=parse_da(date_to) if date_to else None, limit=limit, actor=actor, reason=reason)
    except ConnectorError as exc:
        if self.request.retries < self.max_retries and not self.request.is_eager:
            countdown = _backoff(self.request.retries)
            log.warning("prefetch of priors failed (%s); retry in %ss", exc.code, countdown)
            raise self.retry(countdown=countdown)
        return {"status": "failed", "code": exc.code}
    return {"status": "done", **result.as_dict()}
