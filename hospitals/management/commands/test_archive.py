from django.core.management.base import BaseCommand, CommandError

from hospitals.models import ArchiveEndpoint
from hospitals.services import endpoint_test


def endpoints_for(ref: str):
    """An endpoint id, or a hospital code (all its queryable endpoints)."""
    if ref.isdigit():
        found = list(ArchiveEndpoint.objects.select_related("hospital").filter(pk=int(ref)))
    else:
        found = list(ArchiveEndpoint.objects.select_related("hospital").filter(hospital__code=ref.strip().upper())
                     .exclude(kind="push"))
    if not found:
        raise CommandError(f"no archive endpoint {ref!r}")
    return found


class Command(BaseCommand):
    help = "Test the connection to an archive endpoint (QIDO-RS probe or C-ECHO)."

    def add_arguments(self, parser):
        parser.add_argument("endpoint", help="endpoint id or hospital code")

    def handle(self, *args, endpoint, **options):
        failed = False
        for ep in endpoints_for(endpoint):
            result = endpoint_test(ep)
            line = f"{ep.pk} {ep.hospital.code} {ep.name}: {result.message}"
            self.stdout.write(self.style.SUCCESS(line) if result.ok else self.style.ERROR(f"{line} [{result.code}]"))
            failed |= not result.ok
        if failed:
            raise CommandError("connection test failed")
