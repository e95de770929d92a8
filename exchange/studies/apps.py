from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "exchange.studies"
    label = "studies"
