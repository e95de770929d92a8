from django.conf import settings
from django.db import models
from django.utils import timezone

from audit.chain import GENESIS_HASH


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
    BREAK_GLASS = "break_glass", "Break-glass (emergency) access"
    CONSENT_CHANGE = "consent_change", "Consent change"
    SHARE_LINK_USE = "share_link_use", "Share link use"


class Outcome(models.TextChoices):
    """PS3.15 A.5.2 EventOutcomeIndicator."""

    SUCCESS = "0", "Success"
    MINOR_FAILURE = "4", "Minor failure"
    SERIOUS_FAILURE = "8", "Serious failure"
    MAJOR_FAILURE = "12", "Major failure"


class AppendOnlyQuerySet(models.QuerySet):
    """Refuses bulk writes: the trail is append-only, and rows are added only by record()."""

    def update(self, **kwargs):
        raise PermissionError("audit records are append-only")

    def bulk_update(self, *args, **kwargs):
        raise PermissionError("audit records are append-only")

    def delete(self):
        raise PermissionError("audit records are append-only")

    def bulk_create(self, *args, **kwargs):
        raise PermissionError("audit records are written one at a time through audit.services")


class AuditEvent(models.Model):
    """One append-only audit row, a link of a SHA-256 hash chain (audit/chain.py).

    Written only through audit.services.record(). The database refuses UPDATE (and, on
    PostgreSQL, DELETE) with triggers (migration 0005); the ORM refuses them here.
    """

    # Gap-free position in the chain (ids can skip after rollbacks), assigned under the head lock:
    # by record() itself (AUDIT_CHAIN_MODE=inline) or by the sealer shortly after the action
    # committed (AUDIT_CHAIN_MODE=sequencer; null until then). docs/decisions/0012-audit-sequencer.md
    seq = models.BigIntegerField(unique=True, null=True, blank=True)
    # When the action happened (record() time). In sequencer mode the chain follows commit order,
    # so two close events may be chained in the other order than their timestamps.
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
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
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, blank=True)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["patient", "timestamp"]),
            models.Index(fields=["event", "timestamp"]),
            # The sealer's work queue: events not chained yet (a handful at any time).
            models.Index(fields=["id"], condition=models.Q(seq__isnull=True), name="audit_event_unsealed"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq if self.seq is not None else '(unsealed)'} {self.event} {self.outcome}"

    @property
    def sealed(self) -> bool:
        return self.seq is not None

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("audit events are append-only")
        if not getattr(self, "_from_record", False):
            raise PermissionError("audit events are written only through audit.record()")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit events are append-only")


class AuditHead(models.Model):
    """The tip of the chain: a single row (id=1) holding the last seq and hash.

    Whoever chains events holds this row's lock while doing it: record() in inline mode (one
    UPDATE, held until the action's transaction ends), or the sealer in sequencer mode (SELECT ...
    FOR UPDATE, held for one batch). So two events can never link to the same predecessor. It is a
    cache of the last sealed event: verify_audit checks it.
    """

    ROW_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ROW_ID)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"audit head at seq {self.seq}"


class AuditCheckpoint(models.Model):
    """A signed statement "the chain's event ``seq`` has hash ``hash``", made at ``signed_at``.

    Ed25519 (RFC 8032) signature over audit.signing.checkpoint_message(); with the public key a
    regulator can prove that the trail up to ``seq`` has not been rewritten or cut since.
    """

    seq = models.BigIntegerField(db_index=True)
    hash = models.CharField(max_length=64)
    signed_at = models.DateTimeField()
    signature = models.CharField(max_length=128, help_text="Ed25519 signature, hex")
    key_id = models.CharField(max_length=32, help_text="First 16 bytes (hex) of SHA-256 of the raw public key")

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["seq", "id"]

    def __str__(self) -> str:
        return f"checkpoint at seq {self.seq} ({self.signed_at:%Y-%m-%d %H:%M})"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("audit checkpoints are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("audit checkpoints are append-only")


class ReviewStatus(models.TextChoices):
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    FLAGGED = "flagged", "Flagged"


class BreakGlassReview(models.Model):
    """A regulator's review of one break-glass event: acknowledged as justified, or flagged.

    One review per event. The review itself is also written to the trail (an ADMIN_CHANGE event
    with details.action "break_glass_review"), which is the tamper-evident copy of this row.
    """

    event = models.OneToOneField(AuditEvent, on_delete=models.PROTECT, related_name="review")
    status = models.CharField(max_length=16, choices=ReviewStatus.choices)
    comment = models.TextField(blank=True)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reviewed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-reviewed_at", "-id"]

    def __str__(self) -> str:
        return f"review of #{self.event.seq}: {self.status}"
