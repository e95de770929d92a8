"""REST API of the consent app, under /api/consent/ (FHIR R4 Consent)."""

from django.urls import path

from consent.api import views

urlpatterns = [
    path("Consent", views.ConsentSearchView.as_view(), name="api-consent-search"),
]
