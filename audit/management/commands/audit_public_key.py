"""Print the PEM public key of the audit signing key, for the regulator to verify checkpoints."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from audit.signing import key_id, public_key_pem, signing_key


class Command(BaseCommand):
    help = "Print the Ed25519 public key (PEM) that verifies audit checkpoints."

    def handle(self, *args, **options):
        try:
            public = signing_key().public_key()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(public_key_pem(public), ending="")
        # On stderr, so that stdout is exactly the PEM file.
        self.stderr.write(f"key id {key_id(public)}")
