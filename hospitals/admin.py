from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from hospitals.models import ArchiveEndpoint, Hospital, Profile


@admin.register(Hospital)
class HospitalAdmin(GuardedModelAdmin):
    list_display = ("code", "name", "assigning_authority", "ae_title", "created_at")
    search_fields = ("code", "name", "ae_title")


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role", "hospital")
    list_filter = ("role", "hospital")
    raw_id_fields = ("patient",)


@admin.register(ArchiveEndpoint)
class ArchiveEndpointAdmin(admin.ModelAdmin):
    list_display = ("hospital", "name", "kind", "status", "last_test_ok", "sync_watermark", "last_sync_at")
    list_filter = ("kind", "status", "hospital")
    search_fields = ("name", "hospital__code", "qido_url", "host", "remote_ae_title")
    # The encrypted secret is never shown or edited here: set it through add_archive or the onboarding page.
    exclude = ("secret_encrypted",)
    readonly_fields = ("last_test_at", "last_test_ok", "last_test_result", "sync_watermark", "last_sync_at")
