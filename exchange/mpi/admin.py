from django.contrib import admin

from exchange.mpi.models import Patient, PatientIdentifier


class IdentifierInline(admin.TabularInline):
    model = PatientIdentifier
    extra = 0
    exclude = ("ric_index",)
    readonly_fields = ("hospital", "local_id", "issuer", "name_alphabetic", "name_ideographic", "birth_date", "sex")


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("enterprise_id", "name_ideographic", "name_alphabetic", "birth_date", "sex")
    search_fields = ("enterprise_id", "name_alphabetic", "name_ideographic", "identifiers__local_id")
    exclude = ("ric_index",)
    inlines = [IdentifierInline]


@admin.register(PatientIdentifier)
class PatientIdentifierAdmin(admin.ModelAdmin):
    list_display = ("hospital", "local_id", "patient", "name_ideographic", "name_alphabetic", "birth_date")
    list_filter = ("hospital",)
    search_fields = ("local_id",)
    exclude = ("ric_index",)
    raw_id_fields = ("patient",)
