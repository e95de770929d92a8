"""Re-encrypt every identity card and phone number with the newest key.

Rolling out a key: put the new key first in EXCHANGE_ENCRYPTION_KEYS (keep the old ones after
it) and restart; everything still decrypts (MultiFernet tries each key). Then run this command;
when it reports 0 left, remove the old keys. Safe to run while the platform works and to run
again: values already under the newest key are skipped, each row is updated only if it still
holds the token that was read (a concurrent write wins), and an interrupted run resumes by
simply running it again.
"""

from django.core.management.base import BaseCommand
from django.db import transaction

from exchange.mpi import crypto
from exchange.mpi.models import PatientIdentifier

FIELDS = ("ric_encrypted", "phone_encrypted")


class Command(BaseCommand):
    help = "Re-encrypt identity card and phone numbers with the newest EXCHANGE_ENCRYPTION_KEYS key."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--check", action="store_true", help="only count values not under the newest key")

    def handle(self, *args, batch_size: int, check: bool, **options):
        rotated = current = raced = 0
        last_pk = 0
        while True:
            rows = list(PatientIdentifier.objects.filter(pk__gt=last_pk).exclude(ric_encrypted="", phone_encrypted="")
                        .order_by("pk").values_list("pk", *FIELDS)[:batch_size])
            if not rows:
                break
            last_pk = rows[-1][0]
            with transaction.atomic():
                for pk, *tokens in rows:
                    for field, token in zip(FIELDS, tokens):
                        if not token:
                            continue
                        if crypto.is_current(token):
                            current += 1
                            continue
                        if check:
                            rotated += 1
                            continue
                        # Compare-and-set: only if nobody rewrote the value since we read it.
                        hit = PatientIdentifier.objects.filter(pk=pk, **{field: token}).update(**{field: crypto.rotate(token)})
                        rotated += hit
                        raced += 1 - hit
        verb = "to rotate" if check else "re-encrypted"
        self.stdout.write(f"{rotated} values {verb}, {current} already under the newest key"
                          + (f", {raced} changed concurrently (already current)" if raced else ""))
