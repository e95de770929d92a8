"""Pluggable SMS sending for portal one-time codes.

SMS_BACKEND is "console" (the demo: prints the message with the number masked) or the dotted
path of a class with ``send(phone: str, message: str) -> None`` (a provider's gateway). The full
number never reaches a log.
"""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string


def mask(phone: str) -> str:
    """138****5678."""
    return phone[:3] + "****" + phone[-4:] if len(phone) >= 8 else "*" * len(phone)


class ConsoleBackend:
    def send(self, phone: str, message: str) -> None:
        print(f"SMS to {mask(phone)}: {message}", flush=True)


def get_backend():
    name = settings.SMS_BACKEND
    if name == "console":
        return ConsoleBackend()
    if not name:
        raise ImproperlyConfigured("SMS_BACKEND is not set: portal login codes cannot be sent")
    return import_string(name)()


def send(phone: str, message: str) -> None:
    get_backend().send(phone, message)
