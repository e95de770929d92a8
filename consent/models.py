"""Patient consents, access requests, break-glass, share links and portal one-time codes (issue #5).

Rows here are evidence for consent.policy.decide(); the policy reads them on every request (no
cache), so a revocation or an expiry applies from the next request on.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Scope(models.TextChoices):
    """Who a consent is for: every member hospital, one hospital's clinicians, one clinician."""

    NETWORK = "network", "All hospitals of the network"
    HOSPITAL = "hospital", "One hospital"
    CLINICIAN = "clinician", "One clinician"


class Action(models.TextChoices):
    """PERMIT opens access (opt-in provinces); DENY closes it (an objection under opt-out)."""

    PERMIT = "permit", "Permit"
    DENY = "deny", "Deny"


class ConsentQuerySet(models.QuerySet):
    def active(self, now=None):
        now = now or timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def covering(self, user, hospital_id):
        """Consents whose scope names this clinician, their hospital or the whole network."""
        return self.filter(
            Q(scope=Scope.NETWORK) | Q(scope=Scope.HOSPITAL, hospital_id=hospital_id) | Q(scope=Scope.CLINICIAN, clinician=user)
        )


class Consent(models.Model):
    """A patient's directive: who may see their images (or, action=deny, who may not).

    Optional narrowing of a PERMIT: modalities (backslash-separated, e.g. ``CT\\MR``), a study
    date range, one study. Never edited in place except ``revoked_at``; every change appends a
    ConsentVersion (the versioned history).
    """

    patient = models.ForeignKey("mpi.Patient", on_delete=models.PROTECT, related_name="consents")
    action = models.CharField(max_length=6, choices=Action.choices, default=Action.PERMIT)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    hospital = models.ForeignKey("hospitals.Hospital", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    clinician = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    modalities = models.CharField(max_length=100, blank=True)
    date_from = models.DateField(null=True, blank=True)
    date_to = models.DateField(null=True, blank=True)
    study = models.ForeignKey("studies.Study", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ConsentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["patient", "revoked_at"]), models.Index(fields=["scope", "revoked_at"])]
        constraints = [
            models.CheckConstraint(
                name="consent_scope_target",
                condition=Q(scope="network", hospital__isnull=True, clinician__isnull=True)
                | Q(scope="hospital", hospital__isnull=False, clinician__isnull=True)
                | Q(scope="clinician", clinician__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"consent #{self.pk} ({self.action} {self.scope})"

    @property
    def basis(self) -> str:
        return f"consent:{self.pk}"

    @property
    def modality_set(self) -> set[str]:
        return {m for m in self.modalities.replace(",", "\\").split("\\") if m.strip()}

    @property
    def narrowed(self) -> bool:
        return bool(self.modalities or self.date_from or self.date_to or self.study_id)

    def is_active(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def status(self, now=None) -> str:
        now = now or timezone.now()
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= now:
            return "expired"
        return "active"

    def covers_study(self, study) -> bool:
        """Whether this consent's narrowing (modalities, dates, one study) admits ``study``.
        Must agree with consent.policy._narrowing_q (the same rule in SQL)."""
        if self.study_id and self.study_id != study.pk:
            return False
        if self.modality_set and not (self.modality_set & set(filter(None, study.modalities.split("\\")))):
            return False
        if (self.date_from or self.date_to) and study.study_date is None:
            return False
        if self.date_from and study.study_date < self.date_from:
            return False
        if self.date_to and study.study_date > self.date_to:
            return False
        return True

    def target_label(self) -> str:
        if self.scope == Scope.NETWORK:
            return "All hospitals of the network"
        if self.scope == Scope.HOSPITAL:
            return self.hospital.name if self.hospital else ""
        name = self.clinician.get_full_name() or self.clinician.get_username() if self.clinician else ""
        hospital = getattr(getattr(self.clinician, "profile", None), "hospital", None)
        return f"Dr {name}" + (f", {hospital.name}" if hospital else "")


class ConsentVersion(models.Model):
    """Append-only change log of a consent: what it said after each change, who changed it."""

    consent = models.ForeignKey(Consent, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    change = models.CharField(max_length=16)  # granted / revoked / approved-request
    snapshot = models.JSONField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["consent", "version"]
        constraints = [models.UniqueConstraint(fields=["consent", "version"], name="uniq_consent_version")]

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("consent versions are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("consent versions are append-only")


class RequestStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the patient"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"


class AccessRequest(models.Model):
    """A clinician without consent asks the patient for access (to one study or to the record)."""

    patient = models.ForeignKey("mpi.Patient", on_delete=models.PROTECT, related_name="access_requests")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="access_requests")
    hospital = models.ForeignKey("hospitals.Hospital", on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("studies.Study", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    status = models.CharField(max_length=10, choices=RequestStatus.choices, default=RequestStatus.PENDING, db_index=True)
    consent = models.ForeignKey(Consent, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"access request #{self.pk} ({self.status})"


class BreakGlassReason(models.TextChoices):
    UNCONSCIOUS = "unconscious", "Emergency: patient unconscious or unable to consent"
    LIFE_THREATENING = "life_threatening", "Emergency: life-threatening condition"
    URGENT_TRANSFER = "urgent_transfer", "Urgent transfer between hospitals"
    PATIENT_UNREACHABLE = "patient_unreachable", "Urgent care, patient cannot be reached for consent"
    OTHER = "other", "Other (explain below)"


class BreakGlass(models.Model):
    """An emergency access window for one clinician to one patient; flagged for the regulator."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    hospital = models.ForeignKey("hospitals.Hospital", on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey("mpi.Patient", on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=24, choices=BreakGlassReason.choices)
    reason_text = models.TextField()
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # The flagged BREAK_GLASS event in the audit trail (its seq comes when it is sealed).
    audit_event = models.ForeignKey("audit.AuditEvent", null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["actor", "patient", "expires_at"])]

    def __str__(self) -> str:
        return f"break-glass #{self.pk}"


class ShareLink(models.Model):
    """A link (and QR code) to one study for someone outside the network.

    The token is looked up by its SHA-256 (``token_index``) and kept Fernet-encrypted so the
    patient can show the QR code again; the PIN is stored as a password hash."""

    patient = models.ForeignKey("mpi.Patient", on_delete=models.PROTECT, related_name="share_links")
    study = models.ForeignKey("studies.Study", on_delete=models.PROTECT, related_name="+")
    token_index = models.CharField(max_length=64, unique=True)
    token_encrypted = models.TextField(editable=False)
    pin_hash = models.CharField(max_length=200, blank=True)
    failed_pin_attempts = models.PositiveIntegerField(default=0)
    locked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"share link #{self.pk}"

    def token(self) -> str:
        from exchange.mpi import crypto

        return crypto.decrypt(self.token_encrypted)

    def state(self, now=None) -> str:
        """usable / revoked / expired / locked."""
        now = now or timezone.now()
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        if self.locked_at:
            return "locked"
        return "usable"


class OtpCode(models.Model):
    """A one-time login code sent to a phone (only its keyed hash is kept).

    ``patient`` is null when the number matched no patient or several: no SMS is sent, but the
    row still counts against the hourly limit, so the answer looks the same either way."""

    phone_index = models.CharField(max_length=64, db_index=True)
    patient = models.ForeignKey("mpi.Patient", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    code_hash = models.CharField(max_length=100)  # salt$hmac-sha256
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
