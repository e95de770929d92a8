"""One row per index sync of an archive endpoint: what it saw, wrote and failed on (issue #6)."""

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class SyncJob(models.Model):
    endpoint = models.ForeignKey("hospitals.ArchiveEndpoint", on_delete=models.CASCADE, related_name="sync_jobs")
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # "initial" (from the admin's onboarding page or the operator command) or "periodic" (beat).
    trigger = models.CharField(max_length=20, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Liveness: a running job whose heartbeat is old was left by a crashed worker and may be taken over.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    studies_seen = models.PositiveIntegerField(default=0)
    studies_created = models.PositiveIntegerField(default=0)
    studies_updated = models.PositiveIntegerField(default=0)
    # Indexed studies the archive no longer holds (each confirmed by a query on its UID).
    studies_withdrawn = models.PositiveIntegerField(default=0)
    series = models.PositiveIntegerField(default=0)
    instances = models.PositiveIntegerField(default=0)
    windows_done = models.PositiveIntegerField(default=0)
    # [{"code": "identity_conflict", "study": "<StudyInstanceUID>", "message": "..."}]: never patient data.
    errors = models.JSONField(default=list, blank=True)
    watermark_from = models.DateField(null=True, blank=True)
    watermark_to = models.DateField(null=True, blank=True)
    # 0..100 by dates covered between watermark_from and watermark_to.
    progress = models.PositiveSmallIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # At most one queued-or-running job per endpoint: the claim a second run loses.
            models.UniqueConstraint(fields=["endpoint"], condition=models.Q(status__in=["queued", "running"]),
                                    name="one_active_sync_per_endpoint"),
        ]

    def __str__(self) -> str:
        return f"sync {self.pk} of endpoint {self.endpoint_id} ({self.status})"

    @property
    def active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)
