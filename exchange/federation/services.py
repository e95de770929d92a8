"""Sync jobs: create, claim, finish. A job is claimed with a conditional UPDATE that must hit
exactly one row, so two workers (a redelivered message, a beat tick during a long initial sync)
never run the same endpoint's sync at once."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from exchange.federation.models import JobStatus, SyncJob


def stale_after() -> timedelta:
    # A running job whose worker has not written for this long was left by a crash (a window
    # commits at least every few minutes on any real archive).
    return timedelta(seconds=int(getattr(settings, "FEDERATION_SYNC_STALE_SECONDS", 900)))


def sync_job_create(*, endpoint, actor=None, trigger: str = "") -> SyncJob | None:
    """A queued job for the endpoint, or None if one is already queued or running (and alive)."""
    SyncJob.objects.filter(endpoint=endpoint, status=JobStatus.RUNNING, heartbeat_at__lt=timezone.now() - stale_after()) \
        .update(status=JobStatus.FAILED, finished_at=timezone.now(), message="the worker running this sync was lost")
    try:
        with transaction.atomic():
            return SyncJob.objects.create(endpoint=endpoint, trigger=trigger,
                                          requested_by=actor if getattr(actor, "is_authenticated", False) else None)
    except IntegrityError:
        return None  # one_active_sync_per_endpoint


def sync_job_claim(job_id: int) -> bool:
    """Take a queued job (or one whose worker died) for this worker. False: someone else has it."""
    now = timezone.now()
    return SyncJob.objects.filter(
        Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING, heartbeat_at__lt=now - stale_after()), pk=job_id,
    ).update(status=JobStatus.RUNNING, started_at=now, heartbeat_at=now, message="") == 1


def sync_job_requeue(job_id: int, message: str) -> None:
    SyncJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(status=JobStatus.QUEUED, message=message[:500])


def sync_job_finish(job_id: int, *, failed: bool = False, message: str = "") -> None:
    from hospitals.models import ArchiveEndpoint

    now = timezone.now()
    fields = {"status": JobStatus.FAILED if failed else JobStatus.DONE, "finished_at": now, "message": message[:500]}
    if not failed:
        fields["progress"] = 100
    job = SyncJob.objects.get(pk=job_id)
    SyncJob.objects.filter(pk=job_id).update(**fields)
    ArchiveEndpoint.objects.filter(pk=job.endpoint_id).update(last_sync_at=now)
    if not failed:  # the archive answers again: searches stop backing off from it
        ArchiveEndpoint.objects.filter(pk=job.endpoint_id).update(search_failures=0, search_retry_after=None)
