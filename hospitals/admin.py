from django.contrib import admin
from guardian.admin import GuardedModelAdmin

from hospitals.models import Hospital, Profile


@admin.register(Hospital)
class HospitalAdmin(GuardedModelAdmin):
    list_display = ("code", "name", "assigning_authority", "ae_title", "created_at")
    search_fields = ("code", "name", "ae_title")


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "role", "hospital")
    list_filter = ("role", "hospital")
    raw_id_fields = ("patient",)
