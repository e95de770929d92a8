from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from audit.signing import parse_private_key


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self):
        # Logins happen inside django.contrib.auth; its signals are the one place to see them.
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from audit.models import Event, Outcome
        from audit.services import record

        def logged_in(sender, request, user, **kwargs):
            record(Event.USER_AUTHENTICATION, user, Outcome.SUCCESS, details={"action": "login"})

        def login_failed(sender, credentials, request=None, **kwargs):
            # Only the username tried: never the password.
            record(Event.USER_AUTHENTICATION, None, Outcome.MINOR_FAILURE,
                   details={"action": "login", "username": str(credentials.get("username", ""))[:150]})

        user_logged_in.connect(logged_in, dispatch_uid="audit-login", weak=False)
        user_login_failed.connect(login_failed, dispatch_uid="audit-login-failed", weak=False)
        checks.register(signing_key_check)


def signing_key_check(app_configs, **kwargs):
    """A malformed AUDIT_SIGNING_KEY fails at start-up, not at the first hourly checkpoint."""
    if not getattr(settings, "AUDIT_SIGNING_KEY", None):
        return []
    try:
        parse_private_key(settings.AUDIT_SIGNING_KEY)
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="audit.E001")]
    return []
