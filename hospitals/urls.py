from django.urls import path

from hospitals import views

app_name = "hospitals"
urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("archives/add/", views.endpoint_add, name="endpoint-add"),
    path("archives/<int:pk>/", views.endpoint_detail, name="endpoint"),
    path("archives/<int:pk>/test/", views.endpoint_test, name="endpoint-test"),
    path("archives/<int:pk>/sync/", views.endpoint_sync, name="endpoint-sync"),
    path("archives/<int:pk>/live/", views.endpoint_live, name="endpoint-live"),
    path("archives/<int:pk>/status.json", views.endpoint_status, name="endpoint-status"),
]
