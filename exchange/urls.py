from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

urlpatterns = [
    path("", include("exchange.viewer.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("dicomweb/", include("exchange.dicomweb.urls")),
    path("hospital/", include("hospitals.urls")),
    path("", include("consent.urls")),
    path("audit/", include("audit.urls")),
    path("mpi/", include("exchange.mpi.urls")),
    path("api/", include("exchange.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
]
