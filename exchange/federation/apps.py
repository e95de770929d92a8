from django.apps import AppConfig


class FederationConfig(AppConfig):
    name = "exchange.federation"
    label = "federation"
    verbose_name = "Archive federation"
    default_auto_field = "django.db.models.BigAutoField"
