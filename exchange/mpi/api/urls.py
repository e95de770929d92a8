"""Identity feed, PIX, PDQ and $match (issue #3)."""

from django.urls import path

from exchange.mpi.api import views

urlpatterns = [
    path("fhir/Patient", views.PatientFeedView.as_view(), name="mpi-fhir-patient"),
    path("fhir/Patient/$match", views.MatchView.as_view(), name="mpi-fhir-match"),
    path("fhir/Patient/<str:hospital_code>/<str:local_id>", views.PatientUpdateView.as_view(), name="mpi-fhir-patient-update"),
    path("pix", views.PixView.as_view(), name="mpi-pix"),
    path("pdq", views.PdqView.as_view(), name="mpi-pdq"),
    path("hl7v2", views.Hl7v2View.as_view(), name="mpi-hl7v2"),
]
