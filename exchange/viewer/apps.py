from django.apps import AppConfig


class ViewerConfig(AppConfig):
    name = "exchange.viewer"
    label = "viewer"
