from django.apps import AppConfig


class MpiConfig(AppConfig):
    name = "exchange.mpi"
    label = "mpi"
