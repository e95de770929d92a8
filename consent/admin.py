from django.contrib import admin

from consent.models import AccessRequest, BreakGlass, Consent, ConsentVersion, ShareLink


class ReadOnlyAdmin(admin.ModelAdmin):
    """Consent evidence changes only through consent.services (versioned and audited)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Consent)
class ConsentAdmin(ReadOnlyAdmin):
    list_display = ("id", "patient", "action", "scope", "hospital", "clinician", "expires_at", "revoked_at", "created_at")
    list_filter = ("action", "scope")


@admin.register(ConsentVersion)
class ConsentVersionAdmin(ReadOnlyAdmin):
    list_display = ("consent", "version", "change", "actor", "at")


@admin.register(AccessRequest)
class AccessRequestAdmin(ReadOnlyAdmin):
    list_display = ("id", "requester", "hospital", "status", "created_at", "decided_at")
    list_filter = ("status",)


@admin.register(BreakGlass)
class BreakGlassAdmin(ReadOnlyAdmin):
    list_display = ("id", "actor", "hospital", "reason", "opened_at", "expires_at")


@admin.register(ShareLink)
class ShareLinkAdmin(ReadOnlyAdmin):
    list_display = ("id", "study", "expires_at", "revoked_at", "locked_at", "failed_pin_attempts")
    exclude = ("token_index", "token_encrypted", "pin_hash")
