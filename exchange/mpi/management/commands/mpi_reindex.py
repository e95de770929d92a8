"""Rebuild the matcher's blocking keys and the PDQ name search column of every identifier.

Needed once for identifiers registered before the patient index existed, and after a change of
exchange/mpi/matching.py blocking_keys. Idempotent; runs in batches (one transaction each)."""

from django.core.management.base import BaseCommand

from exchange.mpi.services import identifiers_reindex


class Command(BaseCommand):
    help = "Rebuild blocking keys and name search keys of the patient index."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000)

    def handle(self, *args, batch_size: int, **options):
        n = identifiers_reindex(batch_size=batch_size)
        self.stdout.write(f"{n} identifiers reindexed")
