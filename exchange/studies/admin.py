from django.contrib import admin

from exchange.studies.models import IngestBatch, Instance, Series, Study


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ("study_instance_uid", "hospital", "dicom_patient_id", "study_date", "modalities", "num_series", "num_instances")
    list_filter = ("hospital", "modalities")
    search_fields = ("study_instance_uid", "dicom_patient_id", "accession_number")
    raw_id_fields = ("patient", "identifier")
    date_hierarchy = "study_date"


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):
    list_display = ("series_instance_uid", "study", "modality", "series_number", "num_instances")
    search_fields = ("series_instance_uid",)
    raw_id_fields = ("study",)


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "size", "number_of_frames")
    search_fields = ("sop_instance_uid", "storage_key")
    raw_id_fields = ("series",)


@admin.register(IngestBatch)
class IngestBatchAdmin(admin.ModelAdmin):
    list_display = ("started_at", "hospital", "source", "status", "received", "stored", "duplicates", "rejected")
    list_filter = ("hospital", "source", "status")
