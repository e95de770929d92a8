"""Patient index pages: review queue and stewardship (issue #3)."""

from django.urls import path

from exchange.mpi import views

urlpatterns = [
    path("review/", views.review_list, name="mpi-review"),
    path("review/<int:pk>/", views.review_detail, name="mpi-review-detail"),
]
