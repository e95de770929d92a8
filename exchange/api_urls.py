"""REST API under /api/ (documented in the OpenAPI schema at /api/schema/)."""

from django.urls import include, path

from exchange.federation.api.prefetch import PrefetchView

urlpatterns = [
    path("mpi/", include("exchange.mpi.api.urls")),
    # Prefetch of priors (retrieve proxy, issue #6): exchange/federation/api/prefetch.py
    path("federation/prefetch", PrefetchView.as_view(), name="federation-prefetch"),
    path("federation/", include("exchange.federation.api.urls")),
]
