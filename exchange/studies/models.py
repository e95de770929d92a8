"""The central study index: one row per study, series and instance that a hospital holds.

A study is keyed by (source hospital, StudyInstanceUID): two hospitals that hold the same study
(e.g. one imported the other's CD) each keep their own record, so that one hospital can never
write into another's study (docs/decisions/0003-study-identity.md).
"""

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper


class Availability(models.TextChoices):
    """Where a study's pixels are: stored by the platform, or held by the hospital's archive."""

    LOCAL = "local", "Stored on the platform"
    REMOTE = "remote", "Held by the hospital's archive (federated)"
    # A federated study its archive no longer holds (deleted or moved there; found by the sync).
    # Kept for the audit trail, consents and share links that name it; nobody can read it.
    WITHDRAWN = "withdrawn", "No longer held by the hospital's archive"


class Study(models.Model):
    hospital = models.ForeignKey("hospitals.Hospital", on_delete=models.PROTECT, related_name="studies")
    patient = models.ForeignKey("mpi.Patient", on_delete=models.PROTECT, related_name="studies")
    identifier = models.ForeignKey("mpi.PatientIdentifier", on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.CharField(max_length=16, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_id = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=200, blank=True)
    referring_physician_name = models.CharField(max_length=200, blank=True)
    # Backslash-joined set of modalities in the study (ModalitiesInStudy, 0008,0061).
    modalities = models.CharField(max_length=100, blank=True)
    # Patient attributes as the source sent them (QIDO answers with these).
    dicom_patient_id = models.CharField("PatientID", max_length=64)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_name_alphabetic = models.CharField(max_length=200, blank=True)
    patient_name_ideographic = models.CharField(max_length=200, blank=True)
    patient_name_phonetic = models.CharField(max_length=200, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=1, blank=True)
    # Folded forms for PatientName matching in hanzi or pinyin (exchange/studies/names.py).
    name_search = models.CharField(max_length=600, blank=True)
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    # Federation (issue #6): a study indexed from a hospital archive by sync has no local files;
    # its instances are fetched from source_endpoint on demand.
    availability = models.CharField(max_length=10, choices=Availability.choices, default=Availability.LOCAL)
    source_endpoint = models.ForeignKey("hospitals.ArchiveEndpoint", null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="studies")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(fields=["hospital", "study_instance_uid"], name="uniq_study_per_hospital")
        ]
        indexes = [
            models.Index(fields=["study_instance_uid"]),
            models.Index(fields=["dicom_patient_id"]),
            models.Index(fields=["study_date"]),
            models.Index(fields=["accession_number"]),
            # QIDO-RS matches PatientID and AccessionNumber case-insensitively (UPPER(x) = UPPER(v)),
            # which the plain indexes above cannot serve: without these a search reads every study.
            models.Index(Upper("dicom_patient_id"), name="study_patient_id_upper_idx"),
            models.Index(Upper("accession_number"), name="study_accession_upper_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.hospital.code} study {self.study_instance_uid}"

    @property
    def patient_name_display(self) -> str:
        return " / ".join(n.replace("^", " ").strip() for n in (self.patient_name_ideographic, self.patient_name_alphabetic) if n)


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=200, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    num_instances = models.PositiveIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "series"
        constraints = [models.UniqueConstraint(fields=["study", "series_instance_uid"], name="uniq_series_per_study")]
        indexes = [models.Index(fields=["series_instance_uid"])]

    def __str__(self) -> str:
        return f"series {self.series_instance_uid}"


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    # SHA-256 of the stored Part 10 file (preamble zeroed); the file lives at storage.path_for(key).
    # Blank for an instance held remotely (its study's availability is "remote").
    storage_key = models.CharField(max_length=64, db_index=True, blank=True)
    size = models.BigIntegerField()
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    number_of_frames = models.PositiveIntegerField(default=1)
    # Byte offset and length of the Pixel Data value in the file (length null: encapsulated,
    # undefined length), so frames are read by seeking instead of loading the file.
    pixel_data_offset = models.BigIntegerField(null=True, blank=True)
    pixel_data_length = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["series", "sop_instance_uid"], name="uniq_instance_per_series")]
        indexes = [models.Index(fields=["sop_instance_uid"])]
        ordering = ["instance_number", "id"]

    def __str__(self) -> str:
        return f"instance {self.sop_instance_uid}"


class IngestSource(models.TextChoices):
    STOW = "stow", "STOW-RS"
    IMPORT = "import", "Import (folder, ZIP, DICOMDIR)"
    UPLOAD = "upload", "Web upload"
    DIMSE = "dimse", "DIMSE C-STORE"


class BatchStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class IngestBatch(models.Model):
    """One STOW-RS request or one import: what arrived, what was stored, what was refused."""

    hospital = models.ForeignKey("hospitals.Hospital", on_delete=models.PROTECT, related_name="ingest_batches")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=10, choices=IngestSource.choices)
    status = models.CharField(max_length=10, choices=BatchStatus.choices, default=BatchStatus.RUNNING)
    label = models.CharField(max_length=200, blank=True, help_text="file name of an import, never patient data")
    received = models.PositiveIntegerField(default=0)
    stored = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    bytes_stored = models.BigIntegerField(default=0)
    # [{"item": "IMG0001", "code": "0xC000", "reason": "not a DICOM Part 10 file"}, ...]
    errors = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        verbose_name_plural = "ingest batches"

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.started_at:%Y-%m-%d %H:%M} ({self.hospital.code})"
