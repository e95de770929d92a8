from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail is append-only."""

    list_display = ("id", "timestamp", "event", "outcome", "actor_name", "actor_role", "actor_hospital", "study")
    list_filter = ("event", "outcome", "actor_role", "actor_hospital")
    search_fields = ("actor_name",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
