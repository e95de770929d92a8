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
