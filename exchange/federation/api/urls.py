"""Federation API (issue #6): federated search."""

from django.urls import path

from exchange.federation.api import views

urlpatterns = [
    path("search", views.FederatedSearchView.as_view(), name="federation-search"),
]
