"""REST API under /api/ (documented in the OpenAPI schema at /api/schema/)."""

from django.urls import include, path

urlpatterns = [
    path("mpi/", include("exchange.mpi.api.urls")),
]
