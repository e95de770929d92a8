from django.core.management.base import BaseCommand, CommandError

from exchange.federation.models import SyncJob
from exchange.mpi.identity import parse_da
from hospitals.management.commands.test_archive import endpoints_for
from hospitals.services import endpoint_sync_start


class Command(BaseCommand):
    help = "Start an index sync of a hospital's archive(s): from the watermark, or from --since YYYYMMDD."

    def add_arguments(self, parser):
        parser.add_argument("endpoint", help="hospital code or endpoint id")
        parser.add_argument("--since", help="YYYYMMDD: re-read from this StudyDate instead of the watermark")

    def handle(self, *args, endpoint, since, **options):
        since_date = parse_da(since) if since else None
        if since and since_date is None:
            raise CommandError("--since must be a date as YYYYMMDD")
        for ep in endpoints_for(endpoint):
            job = endpoint_sync_start(endpoint=ep, since=since_date, trigger="operator")
            if job is None:
                self.stdout.write(self.style.WARNING(f"{ep.pk} {ep.hospital.code} {ep.name}: a sync is already running"))
                continue
            job = SyncJob.objects.get(pk=job.pk)
            self.stdout.write(f"{ep.pk} {ep.hospital.code} {ep.name}: job {job.pk} {job.status} · {job.studies_seen} studies "
                              f"seen, {job.studies_created} new, {job.studies_updated} updated, {job.studies_withdrawn} withdrawn, "
                              f"{job.instances} images"
                              f"{' · ' + job.message if job.message else ''}")
