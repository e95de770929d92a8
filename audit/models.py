from django.conf import settings
from django.db import models


class Event(models.TextChoices):
    """Audit vocabulary, after DICOM PS3.15 A.5.3 / IHE ATNA event types."""

    QUERY = "query", "Query"
    INSTANCES_ACCESSED = "instances_accessed", "DICOM instances accessed"
    INSTANCES_TRANSFERRED = "instances_transferred", "DICOM instances transferred"
    INSTANCES_STORED = "instances_stored", "DICOM instances stored (STOW/C-STORE)"
    IMPORT = "import", "Import"
    EXPORT = "export", "Export"
    USER_AUTHENTICATION = "user_authentication", "User authentication"
    PATIENT_RECORD = "patient_record", "Patient record"
    SECURITY_ALERT = "security_alert", "Security alert"
    ACCESS_DENIED = "access_denied", "Access denied"
    ADMIN_CHANGE = "admin_change", "Administrative change"


class Outcome(models.TextChoices):
    """PS3.15 A.5.2 EventOutcomeIndicator."""

    SUCCESS = "0", "Success"
    MINOR_FAILURE = "4", "Minor failure"
    SERIOUS_FAILURE = "8", "Serious failure"
    MAJOR_FAILURE = "12", "Major failure"


class AuditEvent(models.Model):
    """One append-only audit row. Written only through audit.services.record()."""

    timestamp = models.DateTimeField(auto_now_add=True, db_index=True)
    event = models.CharField(max_length=32, choices=Event.choices)
    outcome = models.CharField(max_length=2, choices=Outcome.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    # Snapshot of who acted, as it was at the time (accounts and roles change later).
    actor_name = models.CharField(max_length=150, blank=True)
    actor_role = models.CharField(max_length=20, blank=True)
    actor_hospital = models.ForeignKey(
        "hospitals.Hospital", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    patient = models.ForeignKey("mpi.Patient", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("studies.Study", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    purpose = models.CharField(max_length=32, blank=True)
    basis = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["patient", "timestamp"]), models.Index(fields=["event", "timestamp"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.event} {self.outcome}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit events are append-only")
