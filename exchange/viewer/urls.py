from django.urls import path

from exchange.viewer import views

urlpatterns = [
    path("", views.home, name="home"),
    path("search/", views.search, name="search"),
    path("studies/<int:pk>/", views.study_detail, name="study"),
    path("studies/<int:pk>/series/<int:series_pk>/", views.series_viewer, name="series"),
    path("hospital/ingest/", views.ingest_summary, name="ingest-summary"),
]
