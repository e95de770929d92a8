import uuid

from django.db import models


class Sex(models.TextChoices):
    """PS3.3 C.7.1.1 Patient's Sex (0010,0040) enumerated values."""

    MALE = "M", "Male"
    FEMALE = "F", "Female"
    OTHER = "O", "Other"
    UNKNOWN = "", "Unknown"


class Patient(models.Model):
    """An enterprise (province-wide) patient; hospitals' local ids link to it."""

    enterprise_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name_alphabetic = models.CharField(max_length=200, blank=True)
    name_ideographic = models.CharField(max_length=200, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    # Keyed blind index (HMAC-SHA256) of the Resident Identity Card number; the number itself is
    # not stored by the foundation (the patient-index issue adds encrypted storage).
    ric_index = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Patient {self.enterprise_id}"

    @property
    def display_name(self) -> str:
        return " / ".join(n.replace("^", " ") for n in (self.name_ideographic, self.name_alphabetic) if n)


class PatientIdentifier(models.Model):
    """A hospital's local patient id (assigning authority + PatientID), linked to a patient."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="identifiers")
    hospital = models.ForeignKey("hospitals.Hospital", on_delete=models.PROTECT, related_name="patient_identifiers")
    local_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True, help_text="IssuerOfPatientID as received")
    # Demographics as this hospital recorded them (the patient index compares them).
    name_alphabetic = models.CharField(max_length=200, blank=True)
    name_ideographic = models.CharField(max_length=200, blank=True)
    name_phonetic = models.CharField(max_length=200, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    ric_index = models.CharField(max_length=64, null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hospital", "local_id"], name="uniq_local_id_per_hospital")]

    def __str__(self) -> str:
        return f"{self.hospital.code}:{self.local_id}"
