"""Admin: identity card and phone numbers appear only masked; stewardship goes through services
(the review page and the API), so ReviewItem and MergeRecord are read-only here."""

from django.contrib import admin

from exchange.mpi.models import MergeRecord, Patient, PatientIdentifier, ReviewItem

HIDDEN = ("ric_index", "ric_encrypted", "phone_index", "phone_encrypted")


@admin.display(description="Identity card no.")
def ric_masked(obj):
    return obj.ric_masked


@admin.display(description="Phone")
def phone_masked(obj):
    return obj.phone_masked


class IdentifierInline(admin.TabularInline):
    model = PatientIdentifier
    extra = 0
    can_delete = False
    fields = ("hospital", "local_id", "issuer", "name_alphabetic", "name_ideographic", "birth_date", "sex",
              ric_masked, "ric_status", phone_masked)
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("enterprise_id", "name_ideographic", "name_alphabetic", "birth_date", "sex", "merged_into")
    search_fields = ("enterprise_id", "name_alphabetic", "name_ideographic", "identifiers__local_id")
    exclude = ("ric_index",)
    readonly_fields = ("merged_into",)
    inlines = [IdentifierInline]


@admin.register(PatientIdentifier)
class PatientIdentifierAdmin(admin.ModelAdmin):
    list_display = ("hospital", "local_id", "patient", "name_ideographic", "name_alphabetic", "birth_date",
                    ric_masked, "ric_status", phone_masked)
    list_filter = ("hospital", "ric_status")
    search_fields = ("local_id",)
    exclude = HIDDEN + ("name_search", "name_key")
    readonly_fields = (ric_masked, phone_masked, "ric_status", "patient")
    list_select_related = ("hospital", "patient")


@admin.register(ReviewItem)
class ReviewItemAdmin(admin.ModelAdmin):
    list_display = ("pk", "identifier", "candidate", "score", "status", "decided_by", "decided_at", "created_at")
    list_filter = ("status",)
    list_select_related = ("identifier__hospital", "candidate__hospital", "decided_by")
    readonly_fields = ("identifier", "candidate", "score", "breakdown", "status", "decided_by", "decided_at",
                       "comment", "created_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(MergeRecord)
class MergeRecordAdmin(admin.ModelAdmin):
    list_display = ("pk", "kind", "source", "target", "actor", "created_at", "undone_at")
    list_filter = ("kind",)
    readonly_fields = ("kind", "source", "target", "identifier_ids", "study_ids", "moved_ric_index", "reason", "actor",
                       "created_at", "undone_at", "undone_by")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
