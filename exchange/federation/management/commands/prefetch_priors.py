"""``manage.py prefetch_priors HOSPITAL LOCAL_ID``: warm the retrieve cache with a patient's earlier
remote studies (exchange/federation/prefetch.py), here and now, or queued with --queue. Prints
counts only, never patient data. Audited like the task (INSTANCES_TRANSFERRED, {"prefetch": true})."""

from django.core.management.base import BaseCommand, CommandError

from exchange.federation import cache
from exchange.federation.connectors import ConnectorError
from exchange.federation.prefetch import PrefetchReason, prefetch_priors
from exchange.mpi.identity import parse_da
from exchange.mpi.models import PatientIdentifier


class Command(BaseCommand):
    help = "Warm the retrieve cache with a patient's most recent studies held by hospital archives."

    def add_arguments(self, parser):
        parser.add_argument("hospital", help="code of the hospital whose local id names the patient")
        parser.add_argument("local_id", help="the patient's local id at that hospital")
        parser.add_argument("--modality", action="append", default=[], help="only studies with this modality (repeatable)")
        parser.add_argument("--since", help="YYYYMMDD: only studies from this date")
        parser.add_argument("--until", help="YYYYMMDD: only studies up to this date")
        parser.add_argument("--limit", type=int, help="most recent studies to warm (default EXCHANGE_PREFETCH_STUDIES)")
        parser.add_argument("--queue", action="store_true", help="queue the Celery task instead of running here")

    def handle(self, *args, hospital, local_id, modality, since, until, limit, queue, **options):
        dates = {name: parse_da(value) if value else None for name, value in (("since", since), ("until", until))}
        for name, value in (("since", since), ("until", until)):
            if value and dates[name] is None:
                raise CommandError(f"--{name} must be a date as YYYYMMDD")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        ident = PatientIdentifier.objects.select_related("patient").filter(hospital__code=hospital, local_id=local_id).first()
        if ident is None:
            raise CommandError("no patient with this local id at that hospital")
        patient = ident.patient
        while patient.merged_into_id:
            patient = type(patient).objects.get(pk=patient.merged_into_id)
        modalities = [m.upper() for m in modality]
        if queue:
            from exchange.federation.tasks import prefetch_priors_task

            prefetch_priors_task.delay(patient.pk, modalities=modalities, date_from=since, date_to=until, limit=limit,
                                       reason=PrefetchReason.OTHER.value)
            self.stdout.write("queued")
            return
        try:
            result = prefetch_priors(patient_id=patient.pk, modalities=modalities, date_from=dates["since"],
                                     date_to=dates["until"], limit=limit, reason=PrefetchReason.OTHER.value)
        except ConnectorError as exc:
            raise CommandError(f"an archive failed ({exc.code}): {exc.message}") from None
        entries, size = cache.usage()
        self.stdout.write(f"{result.studies} studies · {result.fetched} instances fetched ({result.bytes} bytes), "
                          f"{result.cached} already cached, {result.failed} failed · cache: {entries} instances, "
                          f"{size} bytes")
