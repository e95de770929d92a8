"""DICOMweb URL space (PS3.18 §10.4-10.6), under /dicomweb/."""

from django.urls import path, re_path

from exchange.dicomweb import views

UID = r"(?P<{}>[0-9.]{{1,64}})"
S, SE, I = UID.format("study_uid"), UID.format("series_uid"), UID.format("sop_uid")

urlpatterns = [
    path("studies", views.StudiesView.as_view(), name="dicomweb-studies"),
    re_path(rf"^studies/{S}$", views.StudyView.as_view(), name="dicomweb-study"),
    re_path(rf"^studies/{S}/metadata$", views.MetadataView.as_view(), name="dicomweb-study-metadata"),
    re_path(rf"^studies/{S}/series$", views.SeriesSearchView.as_view(), name="dicomweb-study-series"),
    re_path(rf"^studies/{S}/instances$", views.InstanceSearchView.as_view(), name="dicomweb-study-instances"),
    re_path(rf"^studies/{S}/series/{SE}$", views.RetrieveView.as_view(), name="dicomweb-series"),
    re_path(rf"^studies/{S}/series/{SE}/metadata$", views.MetadataView.as_view(), name="dicomweb-series-metadata"),
    re_path(rf"^studies/{S}/series/{SE}/instances$", views.InstanceSearchView.as_view(), name="dicomweb-series-instances"),
    re_path(rf"^studies/{S}/series/{SE}/instances/{I}$", views.RetrieveView.as_view(), name="dicomweb-instance"),
    re_path(rf"^studies/{S}/series/{SE}/instances/{I}/metadata$", views.MetadataView.as_view(), name="dicomweb-instance-metadata"),
    re_path(rf"^studies/{S}/series/{SE}/instances/{I}/rendered$", views.RenderedView.as_view(), name="dicomweb-instance-rendered"),
    re_path(rf"^studies/{S}/series/{SE}/instances/{I}/frames/(?P<frames>[0-9,]{{1,200}})$", views.FramesView.as_view(), name="dicomweb-frames"),
    re_path(rf"^studies/{S}/series/{SE}/instances/{I}/frames/(?P<frame>[0-9]{{1,6}})/rendered$", views.RenderedView.as_view(), name="dicomweb-frame-rendered"),
    path("series", views.SeriesSearchView.as_view(), name="dicomweb-all-series"),
    path("instances", views.InstanceSearchView.as_view(), name="dicomweb-all-instances"),
]
