from django.contrib import admin

from exchange.federation.models import SyncJob


@admin.register(SyncJob)
class SyncJobAdmin(admin.ModelAdmin):
    list_display = ("id", "endpoint", "status", "trigger", "started_at", "finished_at", "studies_seen", "studies_created",
                    "instances", "progress")
    list_filter = ("status", "trigger")
    readonly_fields = [f.name for f in SyncJob._meta.fields]
