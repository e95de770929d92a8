from django.contrib import admin

from audit.models import AuditCheckpoint, AuditEvent, BreakGlassReview


class ReadOnlyAdmin(admin.ModelAdmin):
    """Read-only: the trail is append-only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "timestamp", "event", "outcome", "actor_name", "actor_role", "actor_hospital", "study")
    list_filter = ("event", "outcome", "actor_role", "actor_hospital")
    search_fields = ("actor_name",)


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("seq", "signed_at", "key_id", "hash")


@admin.register(BreakGlassReview)
class BreakGlassReviewAdmin(ReadOnlyAdmin):
    """Read-only here: reviews are made on the regulator's page, which audits them."""

    list_display = ("event", "status", "reviewer", "reviewed_at")
    list_filter = ("status",)
