"""Verify the audit trail's hash chain and signed checkpoints; non-zero exit at the first problem."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from audit.signing import load_public_key_pem
from audit.verify import verify_chain


class Command(BaseCommand):
    help = "Recompute every audit hash in seq order, check links, gaps and checkpoint signatures."

    def add_arguments(self, parser):
        parser.add_argument(
            "--public-key",
            action="append",
            metavar="PEM_FILE",
            help="Ed25519 public key (PEM) that signed checkpoints; repeat for rotated keys. "
            "Default: the public half of AUDIT_SIGNING_KEY.",
        )

    def handle(self, *args, public_key=None, **options):
        keys = None
        if public_key:
            keys = []
            for path in public_key:
                try:
                    with open(path, "rb") as handle:
                        keys.append(load_public_key_pem(handle.read()))
                except (OSError, ValueError) as exc:
                    raise CommandError(f"--public-key {path}: {exc}") from None
        try:
            result = verify_chain(public_keys=keys)
        except ImproperlyConfigured as exc:
            raise CommandError(f"cannot verify checkpoints: {exc}; pass --public-key") from None
        if not result.ok:
            raise CommandError(str(result))
        self.stdout.write(str(result))
        if result.sealer_late:
            raise CommandError(f"{result.unsealed} events have waited {result.oldest_unsealed_age:.0f} s to be sealed "
                               "into the chain (more than AUDIT_SEAL_MAX_LAG): is the audit sealer running?")
