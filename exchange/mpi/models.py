import uuid

from django.conf import settings
from django.db import models


class Sex(models.TextChoices):
    """PS3.3 C.7.1.1 Patient's Sex (0010,0040) enumerated values."""

    MALE = "M", "Male"
    FEMALE = "F", "Female"
    OTHER = "O", "Other"
    UNKNOWN = "", "Unknown"


class RicStatus(models.TextChoices):
    """What the sender gave as Resident Identity Card number (GB 11643)."""

    VALID = "valid", "Valid"
    INVALID = "invalid", "Invalid (not trusted)"
    MISSING = "missing", "Missing"


def mask_ric(number: str | None) -> str:
    """3201**********123X: enough for a person to recognise, useless to anyone else."""
    if not number:
        return ""
    if len(number) <= 8:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]


def mask_phone(number: str | None) -> str:
    if not number:
        return ""
    if len(number) <= 5:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 5) + number[-2:]


class Patient(models.Model):
    """An enterprise (province-wide) patient; hospitals' local ids link to it."""

    enterprise_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name_alphabetic = models.CharField(max_length=200, blank=True)
    name_ideographic = models.CharField(max_length=200, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    # Keyed blind index (HMAC-SHA256) of the Resident Identity Card number. The number itself is
    # stored only encrypted, on the identifiers that carried it (PatientIdentifier.ric_encrypted).
    ric_index = models.CharField(max_length=64, null=True, blank=True, unique=True)
    # Set when a steward merged this patient into another; cleared by merge_undo.
    merged_into = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_from")
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
    # Folded hanzi/pinyin forms for PDQ name search (exchange/studies/names.py search_key).
    name_search = models.CharField(max_length=600, blank=True)
    # Folded full pinyin (matching.Prepared.name_key): how common the name is weighs the match.
    name_key = models.CharField(max_length=100, blank=True, db_index=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True)
    ric_index = models.CharField(max_length=64, null=True, blank=True, db_index=True)
    # Fernet token (exchange/mpi/crypto.py) of the valid RIC; never the plain number.
    ric_encrypted = models.TextField(blank=True, editable=False)
    ric_status = models.CharField(max_length=8, choices=RicStatus.choices, default=RicStatus.MISSING)
    phone_index = models.CharField(max_length=64, null=True, blank=True, db_index=True)
    phone_encrypted = models.TextField(blank=True, editable=False)
    # Other ids the sender gave ([{"system": ..., "value": ...}]), not identity card numbers;
    # kept as information, never trusted to create identifiers at other hospitals.
    other_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hospital", "local_id"], name="uniq_local_id_per_hospital")]

    def __str__(self) -> str:
        return f"{self.hospital.code}:{self.local_id}"

    # Plain numbers are decrypted on demand and never cached on the instance.
    def get_ric(self) -> str | None:
        from exchange.mpi import crypto

        return crypto.decrypt(self.ric_encrypted) if self.ric_encrypted else None

    def get_phone(self) -> str | None:
        from exchange.mpi import crypto

        return crypto.decrypt(self.phone_encrypted) if self.phone_encrypted else None

    @property
    def ric_masked(self) -> str:
        return mask_ric(self.get_ric())

    @property
    def phone_masked(self) -> str:
        return mask_phone(self.get_phone())


class BlockingKey(models.Model):
    """One blocking key of an identifier (exchange/mpi/matching.py blocking_keys): candidates for
    a new record are the identifiers that share a key with it, found through the index. Keys are
    stored as keyed HMACs (crypto.blind_index): some carry the identity card or phone number."""

    identifier = models.ForeignKey(PatientIdentifier, on_delete=models.CASCADE, related_name="blocking_keys")
    key = models.CharField(max_length=64, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["identifier", "key"], name="uniq_blocking_key")]

    def __str__(self) -> str:
        return f"blocking key of identifier {self.identifier_id}"


class ReviewStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACCEPTED = "accepted", "Accepted (linked)"
    REJECTED = "rejected", "Rejected (kept apart)"


class ReviewItem(models.Model):
    """A possible match between the thresholds: the new identifier got its own patient and waits
    here until a steward links it to the candidate's patient or keeps them apart."""

    identifier = models.ForeignKey(PatientIdentifier, on_delete=models.CASCADE, related_name="reviews")
    candidate = models.ForeignKey(PatientIdentifier, on_delete=models.CASCADE, related_name="+")
    score = models.FloatField()
    breakdown = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.OPEN, db_index=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-score", "created_at"]
        constraints = [models.UniqueConstraint(fields=["identifier", "candidate"], name="uniq_review_pair")]

    def __str__(self) -> str:
        return f"review #{self.pk} ({self.status}, score {self.score:.1f})"


class MergeKind(models.TextChoices):
    LINK = "link", "Link identifier to patient"
    UNLINK = "unlink", "Unlink identifier to a new patient"
    MERGE = "merge", "Merge patients"


class MergeRecord(models.Model):
    """What one stewardship action moved, so that merge_undo puts exactly that back: the
    identifiers and studies that went from ``source`` to ``target``."""

    kind = models.CharField(max_length=8, choices=MergeKind.choices)
    source = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    target = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="+")
    identifier_ids = models.JSONField(default=list)
    study_ids = models.JSONField(default=list)
    # True when the source's identity card blind index moved to the target with the merge.
    moved_ric_index = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    undone_at = models.DateTimeField(null=True, blank=True)
    undone_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}"
