from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

code_validator = RegexValidator(r"^[A-Z0-9][A-Z0-9_-]{1,31}$", "Use 2-32 upper-case letters, digits, '-' or '_'.")
# PS3.5 §6.2 AE: up to 16 characters of the default repertoire, no backslash or control characters.
ae_title_validator = RegexValidator(r"^[ -\[\]-~]{1,16}$", "An AE title is 1-16 printable ASCII characters, no backslash.")


class Hospital(models.Model):
    """A member hospital of the provincial network."""

    code = models.CharField(max_length=32, unique=True, validators=[code_validator])
    name = models.CharField(max_length=200)
    # Assigning authority of the hospital's local patient ids (IssuerOfPatientID it sends).
    assigning_authority = models.CharField(max_length=64, unique=True)
    ae_title = models.CharField("DICOM AE title", max_length=16, unique=True, validators=[ae_title_validator])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Role(models.TextChoices):
    CLINICIAN = "clinician", "Clinician"
    HOSPITAL_ADMIN = "hospital_admin", "Hospital admin"
    REGULATOR = "regulator", "Regulator"
    PATIENT = "patient", "Patient"
    INGEST = "ingest", "Ingest (system account)"


HOSPITAL_ROLES = {Role.CLINICIAN, Role.HOSPITAL_ADMIN, Role.INGEST}


class Profile(models.Model):
    """What a platform account is: its role, and the hospital or patient it acts for."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=20, choices=Role.choices)
    hospital = models.ForeignKey(Hospital, null=True, blank=True, on_delete=models.PROTECT, related_name="staff")
    patient = models.ForeignKey(
        "mpi.Patient", null=True, blank=True, on_delete=models.PROTECT, related_name="accounts"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                name="profile_hospital_role_has_hospital",
                condition=~models.Q(role__in=["clinician", "hospital_admin", "ingest"]) | models.Q(hospital__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


# --- Archive endpoints (issue #6, docs/decisions/0010-federation.md) ---------------------------


class EndpointKind(models.TextChoices):
    DICOMWEB = "dicomweb", "DICOMweb (QIDO-RS / WADO-RS)"
    DIMSE = "dimse", "DIMSE (C-FIND / C-GET / C-MOVE)"
    PUSH = "push", "Push (the hospital sends to us)"


class EndpointAuth(models.TextChoices):
    NONE = "none", "None"
    BASIC = "basic", "HTTP Basic"
    BEARER = "bearer", "Bearer token"


class RetrieveMethod(models.TextChoices):
    C_GET = "c-get", "C-GET"
    C_MOVE = "c-move", "C-MOVE"


class EndpointStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    TESTING = "testing", "Connection tested"
    SYNCING = "syncing", "Initial index sync"
    LIVE = "live", "Live"
    FAILED = "failed", "Failed"


class ArchiveEndpoint(models.Model):
    """Where a hospital's images are: an archive the platform queries (DICOMweb or DIMSE), or a
    hospital that pushes to the platform. Secrets are stored encrypted (``secret_encrypted``)."""

    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="endpoints")
    kind = models.CharField(max_length=10, choices=EndpointKind.choices)
    name = models.CharField(max_length=100)
    # DICOMweb
    qido_url = models.URLField("QIDO-RS root", max_length=500, blank=True)
    wado_url = models.URLField("WADO-RS root", max_length=500, blank=True)
    stow_url = models.URLField("STOW-RS root", max_length=500, blank=True)
    auth = models.CharField(max_length=10, choices=EndpointAuth.choices, default=EndpointAuth.NONE)
    username = models.CharField(max_length=150, blank=True)
    # Password (basic) or token (bearer), Fernet-encrypted (exchange.mpi.crypto); never shown again.
    secret_encrypted = models.TextField(blank=True)
    verify_tls = models.BooleanField("verify TLS certificates", default=True)
    timeout = models.PositiveIntegerField("timeout (seconds)", default=30)
    # DIMSE
    remote_ae_title = models.CharField("remote AE title", max_length=16, blank=True, validators=[ae_title_validator])
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    calling_ae_title = models.CharField("calling AE title (the platform's)", max_length=16, blank=True,
                                        validators=[ae_title_validator])
    retrieve_method = models.CharField(max_length=10, choices=RetrieveMethod.choices, default=RetrieveMethod.C_GET)
    # Lifecycle
    status = models.CharField(max_length=10, choices=EndpointStatus.choices, default=EndpointStatus.DRAFT)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_result = models.CharField(max_length=500, blank=True)
    # Last StudyDate whose studies are all in the index; the next sync starts there (re-reading
    # that day, since studies dated "today" keep arriving). Advanced only after a whole window.
    sync_watermark = models.DateField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    # Interactive searches back off from an archive that did not answer (exchange/federation/
    # search.py): consecutive failures, and until when a refresh does not ask it. Kept here, not
    # in a process, so every worker backs off alike.
    search_failures = models.PositiveIntegerField(default=0)
    search_retry_after = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["hospital__code", "name"]
        constraints = [models.UniqueConstraint(fields=["hospital", "name"], name="uniq_endpoint_name_per_hospital")]

    def __str__(self) -> str:
        return f"{self.hospital.code} {self.name} ({self.kind})"

    @property
    def secret(self) -> str:
        if not self.secret_encrypted:
            return ""
        from exchange.mpi.crypto import decrypt

        return decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, value: str) -> None:
        from exchange.mpi.crypto import encrypt

        self.secret_encrypted = encrypt(value) if value else ""

    @property
    def queryable(self) -> bool:
        return self.kind in (EndpointKind.DICOMWEB, EndpointKind.DIMSE)
