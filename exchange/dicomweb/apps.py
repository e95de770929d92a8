from django.apps import AppConfig


class DicomwebConfig(AppConfig):
    name = "exchange.dicomweb"
    label = "dicomweb"
