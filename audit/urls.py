"""Regulator pages and audit exports (issue #4), mounted at /audit/."""

from django.urls import path, re_path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("events/", views.events, name="events"),
    path("patients/<uuid:enterprise_id>/", views.patient_history, name="patient"),
    path("break-glass/", views.break_glass, name="break-glass"),
    # /audit/export?format=dicom|fhir|csv&<search filters>; with or without the trailing slash.
    re_path(r"^export/?$", views.export, name="export"),
]
