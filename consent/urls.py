"""Patient portal (/me/), share links (/s/), access requests and break-glass (/consent/), and the
FHIR Consent export (/api/consent/). Mounted at the site root (exchange/urls.py)."""

from django.urls import include, path

from consent import views

urlpatterns = [
    path("me/login/", views.portal_login, name="portal-login"),
    path("me/login/code/", views.portal_code, name="portal-code"),
    path("me/", views.portal_home, name="portal-home"),
    path("me/consents/", views.portal_consents, name="portal-consents"),
    path("me/consents/<int:pk>/revoke/", views.portal_consent_revoke, name="portal-consent-revoke"),
    path("me/requests/<int:pk>/", views.portal_request_decide, name="portal-request-decide"),
    path("me/history/", views.portal_history, name="portal-history"),
    path("me/studies/<int:pk>/share/", views.portal_share_create, name="portal-share-create"),
    path("me/share/<int:pk>/", views.portal_share_detail, name="portal-share"),
    path("me/share/<int:pk>/revoke/", views.portal_share_revoke, name="portal-share-revoke"),
    path("s/<str:token>/", views.share_page, name="share"),
    path("s/<str:token>/img/<int:instance_pk>/", views.share_image, name="share-image"),
    path("consent/request/", views.request_access, name="consent-request"),
    path("consent/requests/", views.clinician_requests, name="consent-requests"),
    path("consent/break-glass/", views.break_glass, name="consent-break-glass"),
    path("api/consent/", include("consent.api.urls")),
]
